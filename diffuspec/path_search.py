"""CPS, causal-consistency path search (DiffuSpec, papers.md section 1).

A one-pass drafter gives a distribution per draft position, not a sentence: the per-position argmax need not
read well left to right. CPS prunes each position to the few tokens that carry most of the mass, then beam-
searches left to right, scoring each path by

    S(path) = sum_i  lam * log q_i(path_i)  +  (1 - lam) * log p_ng(path_i | prefix, path_<i)

with a cheap causal proxy p_ng (here an n-gram model built online from the prompt and the text so far).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

Lattice = list[list[tuple[int, float]]]  # per position: (token, drafter log-prob) candidates


class CausalProxy(Protocol):
    """A cheap left-to-right scorer, fed the committed text as it grows."""

    order: int  # how many tokens of history it reads, the scored token included

    def reset(self) -> None: ...

    def extend(self, tokens: Sequence[int]) -> None: ...

    def logprob(self, history: tuple[int, ...], token: int) -> float: ...


class NGramProxy:
    """Token-level interpolated n-gram model (Witten-Bell back-off to uniform), learnt online.

    Needs no corpus: the engine resets it per generation and extends it with the prompt, then with each
    block of verified tokens.
    """

    def __init__(self, vocab_size: int, order: int = 3) -> None:
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        self.order = order
        self.vocab_size = vocab_size
        self.reset()

    def reset(self) -> None:
        self._counts: dict[tuple[int, ...], Counter[int]] = defaultdict(Counter)
        self._totals: Counter[tuple[int, ...]] = Counter()
        self._seen: list[int] = []

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            t = len(self._seen)
            for h in range(min(self.order - 1, t) + 1):
                history = tuple(self._seen[t - h : t])
                self._counts[history][token] += 1
                self._totals[history] += 1
            self._seen.append(token)

    def logprob(self, history: tuple[int, ...], token: int) -> float:
        prob = 1.0 / self.vocab_size
        for h in range(min(self.order - 1, len(history)) + 1):
            context = history[len(history) - h :]
            counts = self._counts.get(context)
            if not counts:
                break  # a longer history than this was never seen either
            types = len(counts)
            prob = (counts[token] + types * prob) / (self._totals[context] + types)
        return math.log(prob)


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
    tail = tuple(history[len(history) - (proxy.order - 1) :]) if proxy.order > 1 else ()
    beams: list[tuple[float, tuple[int, ...], bool]] = [(0.0, (), False)]  # score, path, finished
    for candidates in lattice:
        expanded = []
        for score, path, finished in beams:
            if finished:
                expanded.append((score, path, True))
                continue
            context = (tail + path)[len(tail + path) - (proxy.order - 1) :] if proxy.order > 1 else ()
            for token, drafter_logprob in candidates:
                step = lam * drafter_logprob + (1.0 - lam) * proxy.logprob(context, token)
                expanded.append((score + step, path + (token,), token in eos))
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
