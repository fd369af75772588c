"""CPS, causal-consistency path search (DiffuSpec, papers.md section 1).

A one-pass drafter gives a distribution per draft position, not a sentence: the per-position argmax need not
read well left to right. CPS prunes each position to the few tokens that carry most of the mass, then beam-
searches left to right, scoring each path by

    S(path) = sum_i  lam * log q_i(path_i)  +  (1 - lam) * log p_ng(path_i | prefix, path_<i)

with a cheap causal proxy p_ng: an n-gram model built online from the prompt and the text so far, mixed with
a fixed corpus n-gram when the drafter ships one (the paper used a corpus-trained KenLM).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

Lattice = list[list[tuple[int, float]]]  # per position: (token, drafter log-prob) candidates


class CausalProxy(Protocol):
    """A cheap left-to-right scorer, fed the committed text as it grows."""

    order: int  # how many tokens of history it reads, the scored token included

    def reset(self) -> None: ...

    def extend(self, tokens: Sequence[int]) -> None: ...

    def logprobs(self, histories: Sequence[tuple[int, ...]], tokens: Sequence[int]) -> list[float]:
        """log p(token_r | history_r) for each row r (one call per lattice position: the beams' candidates)."""
        ...


class CorpusNGram:
    """A fixed token n-gram model counted once from a corpus: the paper's KenLM role, for one tokenizer.

    Interpolated Witten-Bell like ``NGramProxy``. Stored as integer keys per history length (a history of h
    tokens and the next token make one base-V number), looked up through dicts built on load. (history,
    token) pairs seen fewer than ``min_count`` times are dropped before the model is estimated, which keeps
    the table small.
    """

    def __init__(self, vocab_size: int, tables: Sequence[dict[str, torch.Tensor]]) -> None:
        if len(tables) > self.longest_order(vocab_size):
            raise ValueError(
                f"a {len(tables)}-gram over {vocab_size} tokens does not fit 63-bit keys: use a lower order"
            )
        self.vocab_size, self.order, self.tables = vocab_size, len(tables), list(tables)
        # Looked up as Python dicts: CPS asks a few hundred single questions per draft, and a dict answers one
        # in about 0.1 us where a tensor op costs microseconds (a demo-size table is 100k entries).
        self._counts = [dict(zip(t["keys"].tolist(), t["counts"].tolist())) for t in tables]
        self._contexts = [
            dict(zip(t["contexts"].tolist(), zip(t["totals"].tolist(), t["types"].tolist()))) for t in tables
        ]

    @staticmethod
    def longest_order(vocab_size: int) -> int:
        """The longest n-gram whose keys fit 63 bits (5 for a 2k vocabulary, 3 for 150k)."""
        order = 1
        while vocab_size ** (order + 1) < 2**62:
            order += 1
        return order

    @classmethod
    def count(
        cls, sequences: torch.Tensor, vocab_size: int, order: int = 4, *, start: int = 0, min_count: int = 2
    ) -> CorpusNGram:
        """Count ``sequences`` ([n, L] token ids) from position ``start`` on (earlier tokens serve only as
        history, e.g. a prompt before the continuation one wants to model)."""
        seqs = sequences.long().cpu()
        v, length = vocab_size, seqs.shape[1]
        tables = []
        for h in range(order):
            pos = torch.arange(max(start, h), length)
            history = torch.zeros(seqs.shape[0], pos.numel(), dtype=torch.long)
            for i in range(h):
                history = history * v + seqs[:, pos - h + i]
            keys, counts = torch.unique(history * v + seqs[:, pos], return_counts=True)  # sorted
            if h:  # the table is then exactly the n-gram model of what was seen often enough
                kept = counts >= min_count
                keys, counts = keys[kept], counts[kept]
            contexts, inverse, types = torch.unique_consecutive(keys // v, return_inverse=True, return_counts=True)
            totals = torch.zeros_like(contexts).index_add_(0, inverse, counts)
            tables.append({
                "keys": keys, "counts": counts.int(),
                "contexts": contexts, "totals": totals.int(), "types": types.int(),
            })
        return cls(vocab_size, tables)

    def prob(self, history: tuple[int, ...], token: int) -> float:
        v, prob, context = self.vocab_size, 1.0 / self.vocab_size, 0
        for h in range(min(self.order - 1, len(history)) + 1):
            if h:
                context += history[-h] * v ** (h - 1)  # prepend the next older token
            seen = self._contexts[h].get(context)
            if seen is None:
                break  # a longer history than this was never seen either
            total, types = seen
            prob = (self._counts[h].get(context * v + token, 0) + types * prob) / (total + types)
        return prob

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {f"{h}.{name}": t.contiguous() for h, table in enumerate(self.tables) for name, t in table.items()}
        save_file(tensors, str(path), metadata={"vocab_size": str(self.vocab_size), "order": str(self.order)})

    @classmethod
    def load(cls, path: str | Path) -> CorpusNGram:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tables = [
                {name: f.get_tensor(f"{h}.{name}") for name in ("keys", "counts", "contexts", "totals", "types")}
                for h in range(int(meta["order"]))
            ]
        return cls(int(meta["vocab_size"]), tables)


class NGramProxy:
    """Token-level interpolated n-gram model (Witten-Bell back-off to uniform), learnt online, optionally
    mixed with a fixed ``CorpusNGram``: p = (1 - w) p_online + w p_corpus (a cache model beside a corpus
    model: the online part knows this prompt's names, the corpus part how the text usually goes on).

    The engine resets it per generation and extends it with the prompt, then with each block of verified
    tokens; the corpus part never changes.
    """

    def __init__(
        self, vocab_size: int, order: int = 3, corpus: CorpusNGram | None = None, corpus_weight: float = 0.8
    ) -> None:
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        self.online_order = order
        self.order = max(order, corpus.order if corpus else 1)
        self.vocab_size, self.corpus, self.corpus_weight = vocab_size, corpus, corpus_weight
        self.reset()

    def reset(self) -> None:
        self._counts: dict[tuple[int, ...], Counter[int]] = defaultdict(Counter)
        self._totals: Counter[tuple[int, ...]] = Counter()
        self._seen: list[int] = []

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            t = len(self._seen)
            for h in range(min(self.online_order - 1, t) + 1):
                history = tuple(self._seen[t - h : t])
                self._counts[history][token] += 1
                self._totals[history] += 1
            self._seen.append(token)

    def _online_prob(self, history: tuple[int, ...], token: int) -> float:
        prob = 1.0 / self.vocab_size
        for h in range(min(self.online_order - 1, len(history)) + 1):
            context = history[len(history) - h :]
            counts = self._counts.get(context)
            if not counts:
                break  # a longer history than this was never seen either
            types = len(counts)
            prob = (counts[token] + types * prob) / (self._totals[context] + types)
        return prob

    def logprobs(self, histories: Sequence[tuple[int, ...]], tokens: Sequence[int]) -> list[float]:
        online = [self._online_prob(h, t) for h, t in zip(histories, tokens)]
        if self.corpus is None:
            return [math.log(p) for p in online]
        w = self.corpus_weight
        corpus = [self.corpus.prob(h, t) for h, t in zip(histories, tokens)]
        return [math.log((1.0 - w) * a + w * b) for a, b in zip(online, corpus)]

    def logprob(self, history: tuple[int, ...], token: int) -> float:
        return self.logprobs([history], [token])[0]


def prune_lattice(
    logprobs: torch.Tensor, *, tau: float, max_candidates: int, eos_token_ids: Iterable[int]
) -> Lattice:
    """Keep, per position, the smallest top-m set (m <= max_candidates) whose mass reaches ``tau``.

    EOS is always kept as a candidate. Positions after the first one whose most likely token is EOS are
    dropped: the drafter says the text ends there.
    """
    m_max = min(max_candidates, logprobs.shape[-1])
    top_logprobs, top_tokens = logprobs.topk(m_max, dim=-1)
    mass_before = top_logprobs.exp().cumsum(dim=-1) - top_logprobs.exp()
    # m_i: candidates needed to reach tau (at least 1); the slack absorbs float rounding of the mass
    keep = (mass_before < tau - 1e-6).sum(dim=-1)
    eos = sorted(set(eos_token_ids))
    eos_logprobs = logprobs[:, eos].tolist() if eos else [[] for _ in range(logprobs.shape[0])]
    lattice: Lattice = []
    for toks, lps, m, eos_lps in zip(
        top_tokens.tolist(), top_logprobs.tolist(), keep.tolist(), eos_logprobs
    ):
        candidates = list(zip(toks[:m], lps[:m]))
        present = set(toks[:m])
        candidates += [(e, lp) for e, lp in zip(eos, eos_lps) if e not in present]
        lattice.append(candidates)
        if toks[0] in eos:
            break
    return lattice


def beam_search(
    lattice: Lattice,
    proxy: CausalProxy,
    history: Sequence[int],
    *,
    beam_width: int,
    lam: float,
    eos_token_ids: Iterable[int],
) -> list[int]:
    """Best left-to-right path through ``lattice``; a path that takes EOS ends there."""
    eos = set(eos_token_ids)
    keep = proxy.order - 1  # history the proxy reads
    tail = tuple(history[len(history) - keep :]) if keep else ()
    beams: list[tuple[float, tuple[int, ...], bool]] = [(0.0, (), False)]  # score, path, finished
    for candidates in lattice:
        done = [beam for beam in beams if beam[2]]
        live = [beam for beam in beams if not beam[2]]
        rows = [(beam, token, lp) for beam in live for token, lp in candidates]
        contexts = [(tail + beam[1])[len(tail + beam[1]) - keep :] if keep else () for beam, _, _ in rows]
        proxy_logprobs = proxy.logprobs(contexts, [token for _, token, _ in rows]) if rows else []
        expanded = done + [
            (score + lam * drafter_logprob + (1.0 - lam) * proxy_lp, path + (token,), token in eos)
            for ((score, path, _), token, drafter_logprob), proxy_lp in zip(rows, proxy_logprobs)
        ]
        expanded.sort(key=lambda beam: beam[0], reverse=True)
        beams = expanded[:beam_width]
    return list(beams[0][1])


@dataclass(frozen=True)
class PathSearch:
    """CPS with its knobs bound; ``enabled=False`` gives the per-position argmax path."""

    enabled: bool = True
    beam_width: int = 3
    tau: float = 0.8
    max_candidates: int = 15
    lam: float = 0.5

    def __call__(
        self,
        logprobs: torch.Tensor,
        history: Sequence[int],
        proxy: CausalProxy,
        eos_token_ids: Iterable[int],
    ) -> list[int]:
        if not self.enabled:
            return logprobs.argmax(dim=-1).tolist()
        lattice = prune_lattice(
            logprobs, tau=self.tau, max_candidates=self.max_candidates, eos_token_ids=eos_token_ids
        )
        return beam_search(
            lattice, proxy, history, beam_width=self.beam_width, lam=self.lam, eos_token_ids=eos_token_ids
        )
