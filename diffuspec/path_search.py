"""CPS, causal-consistency path search (DiffuSpec, papers.md section 1).

A one-pass drafter gives a distribution per draft position, not a sentence: the per-position argmax need not
read well left to right. CPS prunes each position to the few tokens that carry most of the mass, then beam-
searches left to right, scoring each path by

    S(path) = sum_i  lam * log q_i(path_i)  +  (1 - lam) * log p_ng(path_i | prefix, path_<i)

with a cheap causal proxy p_ng: an n-gram model built online from the prompt and the text so far, mixed with
a fixed corpus n-gram when the drafter ships one (the paper used a corpus-trained KenLM).

Paths of different lengths are ranked by their mean score per token, S(path) / len(path). Every term of S is
a log-probability, so a raw sum favours whichever path stops first: a path that takes EOS at position 3 would
beat any 16-token path whose later tokens are merely likely. Live beams all have the same length, so among
them the mean ranks exactly as the sum; it only decides between a finished path and the live ones, and there
it asks which path is better per token, which is what makes a short path worth proposing.

Speed (k = 16, B = 3: about 50 (beam, candidate) rows a position). Each beam's proxy is folded once into a
few (context, weight) terms (``NGramTrie.terms``), so a row costs one dict look-up per context its beam has
seen, in plain Python floats. The search this replaces cost 2-4x more, not for its look-ups but for building
context tuples and redoing the Witten-Bell recursion for every row. A numpy version (sorted int64 key arrays,
one ``searchsorted`` for all rows of a position) measured no faster on the demo pair: at ~50 rows a position
is ~40 array calls of pure overhead, and its online model cost several times more to extend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .config import DiffuSpecError

# Per position: the candidate tokens, best first, and their drafter log-probs.
Lattice = list[tuple[list[int], list[float]]]
# A probability unrolled into terms: p(token) = base + sum of weight * count(key + token), per term.
Terms = list[tuple[Callable[[int, float], float], int, float]]

ROOT = 0  # trie node of the empty context


class CausalProxy(Protocol):
    """A cheap left-to-right scorer, fed the committed text as it grows.

    A beam's state is opaque to the search: ``start`` gives the state of one that has read ``history``,
    ``probs`` gives p(candidate | state) for a position's candidates, ``advance`` moves it past one token.
    """

    order: int  # how many tokens of history it reads, the scored token included

    def reset(self) -> None: ...

    def extend(self, tokens: Sequence[int]) -> None: ...

    def start(self, history: Sequence[int]) -> Any: ...

    def probs(self, state: Any, tokens: Sequence[int]) -> list[float]: ...

    def advance(self, state: Any, token: int) -> Any: ...


def _probs_from_terms(terms: Terms, base: float, tokens: Sequence[int]) -> list[float]:
    """p(token) for each token: the hot loop of the search (plain floats, one look-up per term)."""
    probs = []
    for token in tokens:
        p = base
        for count, key, weight in terms:
            p += weight * count(key + token, 0.0)
        probs.append(p)
    return probs


class NGramTrie:
    """An interpolated Witten-Bell n-gram model (back-off to uniform) stored as a trie.

    A node is a token sequence of at most ``order`` tokens; its child along token t is the sequence with t
    appended, under the edge key ``node * V + t``. An edge keeps the count of its n-gram; a node keeps, as a
    context, the total count and the number of distinct tokens that followed it, and its suffix (itself
    without its oldest token). The nodes are closed under prefixes and suffixes, so the contexts of a position
    (the suffixes of the text read so far) are the suffix chain of one node: a beam's state.

    Witten-Bell reads, for the contexts c_0 (empty), c_1, ... of a position, p_h = (n_h + N_h p_{h-1}) /
    (T_h + N_h), p_{-1} = 1 / V, with n_h the count of (c_h, token), T_h the context's total and N_h its
    distinct followers, stopping at the first context never seen. Unrolled, p = base + sum_h W_h n_h with
    weights that depend on the contexts only: ``terms``.
    """

    def __init__(self, vocab_size: int, order: int) -> None:
        if order < 1:
            raise DiffuSpecError(f"n-gram order must be >= 1 (1: unigrams), got {order}")
        self.vocab_size, self.order = vocab_size, order
        self.reset()

    def reset(self) -> None:
        self._count: dict[int, float] = {}  # edge key -> count of its n-gram
        self._child: dict[int, int] = {}  # edge key -> child node
        self._suffix, self._total, self._types = [ROOT], [0.0], [0.0]  # per node
        # per (node, weight), cached: a table's trie keeps the nodes its searches met, at most all of them
        self._terms: dict[tuple[int, float], tuple[Terms, float]] = {}
        # per node, cached for good: a node's suffixes never change
        self._chains: dict[int, list[int]] = {}
        self._reach: dict[int, list[int]] = {}
        self._tail = [ROOT]  # extend: the nodes of the text's last 0, 1, ... order - 1 tokens

    def extend(self, tokens: Sequence[int]) -> None:
        """Count ``tokens`` as the continuation of the text counted so far."""
        v, count, child, total, types = self.vocab_size, self._count, self._child, self._total, self._types
        for token in tokens:
            tail, shorter = [ROOT], ROOT
            for context in self._tail:
                key = context * v + token
                node = child.get(key)
                if node is None:  # a new n-gram: a new node, whose suffix is the one just made or found
                    node = child[key] = len(self._suffix)
                    self._suffix.append(shorter)
                    total.append(0.0)
                    types.append(0.0)
                    types[context] += 1.0
                count[key] = count.get(key, 0.0) + 1.0
                total[context] += 1.0
                if len(tail) < self.order:
                    tail.append(node)
                shorter = node
            self._tail = tail
        self._terms.clear()  # the weights changed

    def _contexts(self, state: int) -> list[int]:
        """The contexts a state stands for, shortest first: the root, ..., its suffix, itself (cached: a
        node's suffixes never change)."""
        chain = self._chains.get(state)
        if chain is None:
            chain = [state]
            while chain[-1] != ROOT:
                chain.append(self._suffix[chain[-1]])
            chain = self._chains[state] = chain[::-1]
        return chain

    def terms(self, state: int, weight: float = 1.0) -> tuple[Terms, float]:
        """``weight`` * p(token | state) as terms (count look-up, edge key base node * V, W) per seen context and
        a base. Cached per (state, weight) until the model changes."""
        cached = self._terms.get((state, weight))
        if cached is not None:
            return cached
        chain = self._contexts(state)
        seen = 0
        while seen < len(chain) and self._types[chain[seen]] > 0:  # stop at the first context never seen
            seen += 1
        terms, later, get = [], weight, self._count.get  # later: the back-off factors of the longer contexts
        for node in reversed(chain[:seen]):
            denominator = self._total[node] + self._types[node]
            terms.append((get, node * self.vocab_size, later / denominator))
            later *= self._types[node] / denominator
        cached = self._terms[state, weight] = terms, later / self.vocab_size
        return cached

    def advance(self, state: int, token: int) -> int:
        """The state after ``token``: its longest context that extended by the token is a node (at most
        ``order - 1`` tokens: the longest context the model reads)."""
        reach = self._reach.get(state)
        if reach is None:  # its contexts of at most order - 2 tokens, longest first, as edge key bases
            reach = [node * self.vocab_size for node in self._contexts(state)[: self.order - 1][::-1]]
            self._reach[state] = reach
        for key in reach:
            node = self._child.get(key + token)
            if node is not None:
                return node
        return ROOT

    def start(self, history: Sequence[int]) -> int:
        state = ROOT
        for token in history[max(0, len(history) - (self.order - 1)) :]:
            state = self.advance(state, token)
        return state

    @classmethod
    def from_tables(cls, vocab_size: int, tables: Sequence[dict[str, torch.Tensor]]) -> NGramTrie:
        """The trie of ``CorpusNGram`` tables (table h: (h-token history, token) keys and h-token contexts)."""
        v, order = vocab_size, len(tables)
        # n-grams of each length L: keys of table L-1, contexts of table L, prefixes and suffixes of longer ones
        grams: dict[int, np.ndarray] = {order + 1: np.zeros(0, dtype=np.int64)}
        for length in range(order, 0, -1):
            longer = grams[length + 1]
            parts = [tables[length - 1]["keys"].numpy(), longer // v, longer % v**length]
            if length < order:
                parts.append(tables[length]["contexts"].numpy())
            grams[length] = np.unique(np.concatenate(parts))
        first = {0: ROOT, 1: ROOT + 1}  # node ids: the root, then the n-grams by length
        for length in range(1, order + 1):
            first[length + 1] = first[length] + grams[length].size

        def node_of(length: int, values: np.ndarray) -> np.ndarray:  # every value is a node
            return np.searchsorted(grams[length], values) + first[length] if length else np.full(values.size, ROOT)

        trie = cls(vocab_size, order)
        nodes = first[order + 1]
        suffix, total, types = np.full(nodes, ROOT), np.zeros(nodes), np.zeros(nodes)
        keys, children, count_keys, counts = [], [], [], []
        for h, table in enumerate(tables):  # table h: (h+1)-gram keys, h-gram contexts
            contexts = node_of(h, table["contexts"].numpy())
            total[contexts], types[contexts] = table["totals"].numpy(), table["types"].numpy()
            gram, ids = grams[h + 1], np.arange(first[h + 1], first[h + 2])
            keys.append(node_of(h, gram // v) * v + gram % v)
            children.append(ids)
            suffix[ids] = node_of(h, gram % v**h)
            table_keys = table["keys"].numpy()
            count_keys.append(node_of(h, table_keys // v) * v + table_keys % v)
            counts.append(table["counts"].numpy().astype(np.float64))
        trie._child = dict(zip(np.concatenate(keys).tolist(), np.concatenate(children).tolist()))
        trie._count = dict(zip(np.concatenate(count_keys).tolist(), np.concatenate(counts).tolist()))
        trie._suffix, trie._total, trie._types = suffix.tolist(), total.tolist(), types.tolist()
        return trie


class CorpusNGram:
    """A fixed token n-gram model counted once from a corpus: the paper's KenLM role, for one tokenizer.

    Interpolated Witten-Bell like the online model. Saved as integer keys per history length (a history of h
    tokens and the next token make one base-V number); looked up through an ``NGramTrie`` built on load.
    (history, token) pairs seen fewer than ``min_count`` times are dropped before the model is estimated,
    which keeps the table small.
    """

    def __init__(self, vocab_size: int, tables: Sequence[dict[str, torch.Tensor]]) -> None:
        if len(tables) > self.longest_order(vocab_size):
            raise DiffuSpecError(
                f"a {len(tables)}-gram over {vocab_size} tokens does not fit 63-bit keys: use a lower order "
                f"(at most {self.longest_order(vocab_size)})"
            )
        self.vocab_size, self.order, self.tables = vocab_size, len(tables), list(tables)
        self.trie = NGramTrie.from_tables(vocab_size, self.tables)

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

    def prob(self, history: Sequence[int], token: int) -> float:
        return _probs_from_terms(*self.trie.terms(self.trie.start(history)), [token])[0]

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
    tokens; the corpus part never changes. A beam's state is its node in each model.
    """

    def __init__(
        self, vocab_size: int, order: int = 3, corpus: CorpusNGram | None = None, corpus_weight: float = 0.8
    ) -> None:
        self.online = NGramTrie(vocab_size, order)
        self.order = max(order, corpus.order if corpus else 1)
        self.vocab_size, self.corpus, self.corpus_weight = vocab_size, corpus, corpus_weight
        # (model, weight) pairs; a model of weight 0 is left out of every sum: no look-ups for it
        mixture = [(self.online, 1.0 - corpus_weight), (corpus.trie, corpus_weight)] if corpus else [(self.online, 1.0)]
        self._models = [(model, weight) for model, weight in mixture if weight > 0]
        self._terms: dict[tuple[int, ...], tuple[Terms, float]] = {}  # per state: both models' terms, weighted

    def reset(self) -> None:
        self.online.reset()
        self._terms.clear()

    def extend(self, tokens: Sequence[int]) -> None:
        self.online.extend(tokens)
        self._terms.clear()

    def start(self, history: Sequence[int]) -> tuple[int, ...]:
        return tuple(model.start(history) for model, _ in self._models)

    def probs(self, state: tuple[int, ...], tokens: Sequence[int]) -> list[float]:
        mixed = self._terms.get(state)
        if mixed is None:  # the mixture as one list of terms: each model's, weighted
            terms, base = [], 0.0
            for (model, weight), node in zip(self._models, state):
                model_terms, model_base = model.terms(node, weight)
                terms += model_terms
                base += model_base
            mixed = self._terms[state] = terms, base
        return _probs_from_terms(*mixed, tokens)

    def advance(self, state: tuple[int, ...], token: int) -> tuple[int, ...]:
        return tuple([model.advance(node, token) for (model, _), node in zip(self._models, state)])

    def logprob(self, history: Sequence[int], token: int) -> float:
        """log p(token | history), one question at a time (for inspection and tests)."""
        return math.log(self.probs(self.start(history), [token])[0])


def prune_lattice(
    logprobs: torch.Tensor, *, tau: float, max_candidates: int, eos_token_ids: Iterable[int]
) -> Lattice:
    """Keep, per position, the smallest top-m set (m <= max_candidates) whose mass reaches ``tau``.

    EOS is always kept as a candidate. Positions after the first one whose most likely token is EOS are
    dropped: the drafter says the text ends there.
    """
    eos = sorted(set(eos_token_ids))
    top_logprobs, top_tokens = logprobs.float().topk(min(max_candidates, logprobs.shape[-1]), dim=-1)
    eos_logprobs = logprobs[:, eos].float().tolist() if eos else [[]] * logprobs.shape[0]
    lattice: Lattice = []
    for tokens, lps, eos_lps in zip(top_tokens.tolist(), top_logprobs.tolist(), eos_logprobs):
        m, mass = 0, 0.0
        # m: candidates needed to reach tau (at least 1); the slack absorbs float rounding of the mass
        while m < len(tokens) and (m == 0 or mass < tau - 1e-6):
            mass += math.exp(lps[m])
            m += 1
        kept = tokens[:m]
        missing = [(e, lp) for e, lp in zip(eos, eos_lps) if e not in kept]
        lattice.append((kept + [e for e, _ in missing], lps[:m] + [lp for _, lp in missing]))
        if tokens[0] in eos:
            break  # the drafter's best guess here is the end of the text
    return lattice


def beam_search(
    lattice: Lattice,
    proxy: CausalProxy,
    history: Sequence[int],
    *,
    beam_width: int,
    lam: float,
    eos_token_ids: Iterable[int],
) -> list[list[int]]:
    """The final beams through ``lattice``, best first by mean score per token; a path that takes EOS ends
    there (see the module docstring for why lengths are compared through the mean)."""
    eos, log = set(eos_token_ids), math.log
    if lam >= 1.0:  # the drafter alone: no proxy to ask
        proxy = _Uniform()
    # S / (1 - lam) ranks as S does, and saves scaling the proxy's term of every row
    drafter_weight = lam / (1.0 - lam) if lam < 1.0 else 1.0
    beams = [(0.0, (), proxy.start(history))]  # score, path, proxy state
    finished: list[tuple[float, tuple[int, ...]]] = []  # (mean score, path): the kept paths that took EOS
    length = 0
    for length, (tokens, drafter_logprobs) in enumerate(lattice, start=1):
        drafter_terms = [drafter_weight * lp for lp in drafter_logprobs]
        totals: list[float] = []  # per (beam, candidate), flat
        for score, _, state in beams:
            totals += [score + d + log(p) for d, p in zip(drafter_terms, proxy.probs(state, tokens))]
        best = sorted(range(len(totals)), key=totals.__getitem__, reverse=True)[:beam_width]  # stable on ties
        ranked: list[tuple[float, Any]] = [(totals[j] / length, j) for j in best]
        if finished:  # a stable sort with the finished paths first: they keep their place on a tie
            ranked = sorted(finished + ranked, key=lambda entry: -entry[0])[:beam_width]
        finished, kept = [], []
        for mean, j in ranked:
            if isinstance(j, tuple):  # a finished path
                finished.append((mean, j))
                continue
            score, path, state = beams[j // len(tokens)]
            token = tokens[j % len(tokens)]
            if token in eos:
                finished.append((mean, path + (token,)))
            else:
                kept.append((totals[j], path + (token,), proxy.advance(state, token)))
        beams = kept
        if not beams:
            break
    final = finished + [(score / max(length, 1), path) for score, path, _ in beams]
    return [list(path) for _, path in sorted(final, key=lambda entry: -entry[0])]


class _Uniform:
    """The proxy of a search that does not read one (lambda = 1): the same score for every candidate."""

    def start(self, history: Sequence[int]) -> None:
        return None

    def probs(self, state: None, tokens: Sequence[int]) -> list[float]:
        return [1.0] * len(tokens)

    def advance(self, state: None, token: int) -> None:
        return None


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
        eos = list(eos_token_ids)
        lattice = prune_lattice(logprobs, tau=self.tau, max_candidates=self.max_candidates, eos_token_ids=eos)
        return beam_search(lattice, proxy, history, beam_width=self.beam_width, lam=self.lam, eos_token_ids=eos)[0]
