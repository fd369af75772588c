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

Speed: each position scores all beams x candidates at once. Both n-gram models are tries stored as numpy
arrays (``NGramTrie``): one ``np.searchsorted`` finds every (context, candidate) pair of a position, and the
Witten-Bell interpolation is folded into per-context weights, so a probability is a dot product of counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .config import DiffuSpecError


@dataclass(frozen=True)
class Lattice:
    """The pruned drafter output: position i's candidates are ``tokens[i, :sizes[i]]``, best first, with their
    drafter log-probs ``logprobs[i, :sizes[i]]`` (padded rows, so that a position is a view, not a copy)."""

    tokens: np.ndarray  # [positions, columns] int64
    logprobs: np.ndarray  # [positions, columns] float64
    sizes: list[int]

    def __len__(self) -> int:
        return len(self.sizes)

    def candidates(self, position: int) -> list[tuple[int, float]]:
        n = self.sizes[position]
        return list(zip(self.tokens[position, :n].tolist(), self.logprobs[position, :n].tolist()))


class CausalProxy(Protocol):
    """A cheap left-to-right scorer, fed the committed text as it grows, scoring many beams at once.

    A beam's state is opaque to the search: ``start`` makes the state of one beam that has read ``history``,
    ``score`` scores every beam of a state against a position's candidates and ``advance`` picks the
    (beam, candidate) pairs that survive as the next state.
    """

    order: int  # how many tokens of history it reads, the scored token included

    def reset(self) -> None: ...

    def extend(self, tokens: Sequence[int]) -> None: ...

    def start(self, history: Sequence[int]) -> Any: ...

    def score(self, state: Any, tokens: np.ndarray) -> tuple[np.ndarray, Any]:
        """log p(token | beam), [beams, len(tokens)], and what ``advance`` needs."""
        ...

    def advance(self, scored: Any, picks: np.ndarray) -> Any:
        """The state of the chosen (beam, candidate) pairs, ``picks`` indexing [beams, candidates] flat."""
        ...


ROOT, UNSEEN = 0, 1  # trie nodes: the empty context; every context never seen (it has no children)


class NGramTrie:
    """An interpolated Witten-Bell n-gram model (back-off to uniform) stored as a trie for batched look-ups.

    A node is a token sequence; its child along token t is the sequence with t appended, found through one
    sorted array of int64 edge keys ``parent * V + t``, so one ``np.searchsorted`` answers a whole batch. A node
    keeps its count as an n-gram (how often its last token followed the rest) and, as a context, the total and
    number of distinct continuations Witten-Bell needs.

    Witten-Bell reads, for the contexts c_0 (empty) ... c_{n-1} of a position, p_h = (c_h + N_h p_{h-1}) /
    (T_h + N_h), p_{-1} = 1 / V, with c_h the count of (context_h, token), T_h the context's total and N_h its
    number of distinct continuations, stopping at the first context never seen. Unrolled, p = base +
    sum_h W_h c_h, with weights that depend on the contexts only. The contexts of a position are the suffixes
    of the longest one seen, so a beam's state is that one node; its chain of suffixes, their edge keys and
    the weights are precomputed per node, and a beam's candidates cost one search, one gather of counts and a
    dot product. (The suffixes of a seen context were seen too: true of any counted text, which is what the
    state relies on.)
    """

    def __init__(
        self,
        vocab_size: int,
        order: int,
        edges: tuple[np.ndarray, np.ndarray],
        count: np.ndarray,
        total: np.ndarray,
        types: np.ndarray,
        suffix: np.ndarray,
        depth: np.ndarray,
    ) -> None:
        self.vocab_size, self.order = vocab_size, order
        keys, children = edges
        # A sentinel key past every real one keeps searchsorted's answers inside the array.
        self.edge_keys = np.append(keys, np.iinfo(np.int64).max)
        self.edge_child = np.append(children, UNSEEN)
        self.count, self.total, self.types, self.suffix, self.depth = count, total, types, suffix, depth
        self.chain = np.full((count.size, order), UNSEEN, dtype=np.int64)  # node -> its suffixes by length
        self.chain[ROOT, 0] = ROOT
        self._chain(np.arange(2, count.size))
        self._weigh()

    def _chain(self, nodes: np.ndarray) -> None:
        for d in range(1, self.order):  # a suffix is one shorter, so its chain is ready one level earlier
            at = nodes[self.depth[nodes] == d]
            self.chain[at] = self.chain[self.suffix[at]]
            self.chain[at, d] = at

    def _weigh(self) -> None:
        # an unseen context (N = 0) passes the lower order through: weight 0, back-off factor 1
        seen = self.types > 0
        denominator = np.where(seen, self.total + self.types, 1.0)
        inverse, backoff = (np.where(seen, 1.0 / denominator, 0.0)[self.chain],
                            np.where(seen, self.types / denominator, 1.0)[self.chain])
        later = np.ones_like(backoff)  # product of the back-off factors of the longer contexts
        later[:, :-1] = np.cumprod(backoff[:, :0:-1], axis=1)[:, ::-1]
        self.weights = inverse * later
        self.base = later[:, 0] * backoff[:, 0] / self.vocab_size
        self.context_keys = self.chain * self.vocab_size
        self.edge_count = self.count[self.edge_child]

    @classmethod
    def from_tables(cls, vocab_size: int, tables: Sequence[dict[str, torch.Tensor]]) -> NGramTrie:
        """The trie of ``CorpusNGram`` tables (table h: (h-token history, token) keys and h-token contexts)."""
        v, order = vocab_size, len(tables)
        # n-grams of each length L: keys of table L-1, contexts of table L, and every prefix of a longer one
        grams: dict[int, np.ndarray] = {order + 1: np.zeros(0, dtype=np.int64)}
        for length in range(order, 0, -1):
            parts = [tables[length - 1]["keys"].numpy(), grams[length + 1] // v]
            if length < order:
                parts.append(tables[length]["contexts"].numpy())
            grams[length] = np.unique(np.concatenate(parts))
        first = {1: 2}  # node ids: ROOT, UNSEEN, then the n-grams by length
        for length in range(1, order + 1):
            first[length + 1] = first[length] + grams[length].size
        nodes = first[order + 1]
        count, total, types = np.zeros(nodes), np.zeros(nodes), np.zeros(nodes)
        suffix, depth = np.full(nodes, UNSEEN), np.zeros(nodes, dtype=np.int64)

        def node_of(length: int, values: np.ndarray) -> np.ndarray:
            if not length:
                return np.full(values.size, ROOT)
            at = np.minimum(np.searchsorted(grams[length], values), grams[length].size - 1)
            return np.where(grams[length][at] == values, at + first[length], UNSEEN)

        keys, children = [], []
        for h, table in enumerate(tables):  # table h: (h+1)-gram keys, h-gram contexts
            count[node_of(h + 1, table["keys"].numpy())] = table["counts"].numpy()
            contexts = node_of(h, table["contexts"].numpy())
            total[contexts], types[contexts] = table["totals"].numpy(), table["types"].numpy()
            gram, ids = grams[h + 1], np.arange(first[h + 1], first[h + 2])
            keys.append(node_of(h, gram // v) * v + gram % v)
            children.append(ids)
            suffix[ids], depth[ids] = node_of(h, gram % v**h), h + 1
        keys_all, children_all = np.concatenate(keys), np.concatenate(children)
        by_key = np.argsort(keys_all)
        edges = keys_all[by_key], children_all[by_key]
        return cls(v, order, edges, count, total, types, suffix, depth)

    def start(self, history: Sequence[int]) -> np.ndarray:
        """The state of one beam that has read ``history``, found token by token as ``advance`` finds it."""
        state = ROOT
        for token in history[max(0, len(history) - (self.order - 1)) :]:
            keys = self.context_keys[state, : self.order - 1] + token
            at = self.edge_keys.searchsorted(keys)
            longest = int((self.edge_keys[at] == keys).sum())
            state = int(self.edge_child[at[longest - 1]]) if longest else ROOT
        return np.array([state])

    def score(self, state: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """[beams, candidates] probabilities, and what ``advance`` needs: where each (beam, candidate, context)
        edge lies in the key array, and how many contexts of each (beam, candidate) it extends."""
        # (take, matmul: the cheapest numpy calls for these tiny arrays; a position is all overhead)
        keys = self.context_keys.take(state, axis=0)[:, None, :] + tokens[:, None]  # [beams, candidates, contexts]
        at = self.edge_keys.searchsorted(keys)
        hit = self.edge_keys.take(at) == keys
        counts = self.edge_count.take(at) * hit
        probs = np.matmul(counts, self.weights.take(state, axis=0)[:, :, None])[:, :, 0]
        probs += self.base.take(state)[:, None]
        # the suffixes of a node are nodes, so the hits of a (beam, candidate) are a prefix of its contexts
        return probs, (at, hit[:, :, : self.order - 1].sum(axis=2))

    def advance(self, found: tuple[np.ndarray, np.ndarray], picks: np.ndarray) -> np.ndarray:
        """The states after the chosen (beam, candidate) pairs, ``picks`` indexing [beams, candidates] flat: the
        longest context extended by the token that is a node, up to one token shorter than the order (the
        longest context the model reads)."""
        at, extended = found
        longest = extended.take(picks)
        child = self.edge_child.take(at.take(picks * self.order + longest - 1))
        return np.where(longest > 0, child, ROOT)


class OnlineNGram(NGramTrie):
    """An ``NGramTrie`` learnt from a text as it grows: ``extend`` costs a few dict operations per token, one
    merge of the new edges into the sorted key array and a refresh of the per-node weights."""

    def __init__(self, vocab_size: int, order: int) -> None:
        if order < 1:
            raise DiffuSpecError(f"n-gram order must be >= 1 (1: unigrams), got {order}")
        self.vocab_size, self.order = vocab_size, order
        self.reset()

    def reset(self) -> None:
        nothing, pair = np.zeros(0, dtype=np.int64), np.zeros(2)
        super().__init__(
            self.vocab_size, self.order, (nothing, nothing), pair, pair.copy(), pair.copy(),
            np.full(2, UNSEEN), np.zeros(2, dtype=np.int64),
        )
        self._edges: dict[int, int] = {}  # edge key -> child node, for extend
        self._tail = [ROOT]  # the contexts at the end of the text, by length

    def extend(self, tokens: Sequence[int]) -> None:
        v, nodes = self.vocab_size, self.count.size
        parents, children, new_keys, new_suffix, new_depth = [], [], [], [], []
        for token in tokens:
            tail, shorter = [ROOT], ROOT
            for length, context in enumerate(self._tail):
                key = context * v + token
                child = self._edges.get(key)
                if child is None:
                    child = self._edges[key] = nodes + len(new_keys)
                    new_keys.append(key)
                    new_suffix.append(shorter)
                    new_depth.append(length + 1)
                parents.append(context)
                children.append(child)
                if length + 1 < self.order:
                    tail.append(child)
                shorter = child
            self._tail = tail
        if not parents:
            return
        added = len(new_keys)
        self.count, self.total, self.types = (np.pad(a, (0, added)) for a in (self.count, self.total, self.types))
        self.suffix = np.append(self.suffix, np.array(new_suffix, dtype=np.int64))
        self.depth = np.append(self.depth, np.array(new_depth, dtype=np.int64))
        self.chain = np.pad(self.chain, ((0, added), (0, 0)), constant_values=UNSEEN)
        np.add.at(self.count, children, 1.0)
        np.add.at(self.total, parents, 1.0)
        if added:
            keys = np.array(new_keys, dtype=np.int64)
            np.add.at(self.types, keys // v, 1.0)
            by_key = np.argsort(keys)
            at = np.searchsorted(self.edge_keys, keys[by_key])
            self.edge_keys = np.insert(self.edge_keys, at, keys[by_key])
            self.edge_child = np.insert(self.edge_child, at, np.arange(nodes, nodes + added)[by_key])
            self._chain(np.arange(nodes, nodes + added))
        self._weigh()


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
        return float(self.trie.score(self.trie.start(history), np.array([token]))[0][0, 0])

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
    tokens; the corpus part never changes. A beam's state is one row of node ids per model.
    """

    def __init__(
        self, vocab_size: int, order: int = 3, corpus: CorpusNGram | None = None, corpus_weight: float = 0.8
    ) -> None:
        self.online = OnlineNGram(vocab_size, order)
        self.order = max(order, corpus.order if corpus else 1)
        self.vocab_size, self.corpus, self.corpus_weight = vocab_size, corpus, corpus_weight
        # weight 0 leaves the corpus out of every sum: skip its look-ups
        self._models = (self.online, corpus.trie) if corpus is not None and corpus_weight > 0 else (self.online,)

    def reset(self) -> None:
        self.online.reset()

    def extend(self, tokens: Sequence[int]) -> None:
        self.online.extend(tokens)

    def start(self, history: Sequence[int]) -> tuple[np.ndarray, ...]:
        return tuple(model.start(history) for model in self._models)

    def score(self, state: tuple[np.ndarray, ...], tokens: np.ndarray) -> tuple[np.ndarray, tuple[Any, ...]]:
        (online, found), *corpus = (model.score(s, tokens) for model, s in zip(self._models, state))
        if corpus:
            w = self.corpus_weight
            online = (1.0 - w) * online + w * corpus[0][0]
            found = (found, corpus[0][1])
        else:
            found = (found,)
        return np.log(online), found

    def advance(self, found: tuple[Any, ...], picks: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(model.advance(f, picks) for model, f in zip(self._models, found))

    def logprob(self, history: Sequence[int], token: int) -> float:
        """log p(token | history), one question at a time (for inspection and tests)."""
        return float(self.score(self.start(history), np.array([token]))[0][0, 0])


def prune_lattice(
    logprobs: torch.Tensor, *, tau: float, max_candidates: int, eos_token_ids: Iterable[int]
) -> Lattice:
    """Keep, per position, the smallest top-m set (m <= max_candidates) whose mass reaches ``tau``.

    EOS is always kept as a candidate. Positions after the first one whose most likely token is EOS are
    dropped: the drafter says the text ends there.
    """
    m_max = min(max_candidates, logprobs.shape[-1])
    eos = np.array(sorted(set(eos_token_ids)), dtype=np.int64)
    top_logprobs, top_tokens = logprobs.float().topk(m_max, dim=-1)
    # one transfer from the device: the top candidates, then each EOS
    lps = torch.cat([top_logprobs, logprobs[:, eos].float()], dim=1).cpu().numpy().astype(np.float64)
    top = top_tokens.cpu().numpy()
    ends = np.flatnonzero(np.isin(top[:, 0], eos))
    if ends.size:  # the drafter's best guess there is the end of the text
        top, lps = top[: ends[0] + 1], lps[: ends[0] + 1]
    probs = np.exp(lps[:, :m_max])
    # m_i: candidates needed to reach tau (at least 1); the slack absorbs float rounding of the mass
    m = np.maximum(((np.cumsum(probs, axis=1) - probs) < tau - 1e-6).sum(axis=1), 1)
    kept = np.arange(m_max) < m[:, None]
    missing = ~(kept[:, :, None] & (top[:, :, None] == eos)).any(axis=1)  # EOS not among the kept
    valid = np.concatenate([kept, missing], axis=1)
    tokens = np.concatenate([top, np.broadcast_to(eos, (top.shape[0], eos.size))], axis=1)
    columns = np.argsort(~valid, axis=1, kind="stable")  # each row's candidates to its front, order kept
    return Lattice(
        np.take_along_axis(tokens, columns, axis=1),
        np.take_along_axis(lps, columns, axis=1),
        valid.sum(axis=1).tolist(),
    )


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
    eos = set(eos_token_ids)
    drafter_terms = lam * lattice.logprobs
    state = proxy.start(history)
    scores, paths = np.zeros(1), [()]
    finished: list[tuple[float, tuple[int, ...]]] = []  # (mean score, path): the kept paths that took EOS
    length = 0
    for length, size in enumerate(lattice.sizes, start=1):
        tokens = lattice.tokens[length - 1, :size]
        proxy_logprobs, found = proxy.score(state, tokens)
        total = (scores[:, None] + (drafter_terms[length - 1, :size] + (1.0 - lam) * proxy_logprobs)).ravel()
        values, candidates = total.tolist(), tokens.tolist()
        expansions = [(values[j] / length, j) for j in np.argsort(-total, kind="stable")[:beam_width].tolist()]
        # a stable sort with the finished paths first: they keep their place on a tie
        ranked = sorted(finished + expansions, key=lambda entry: -entry[0])[:beam_width]
        finished, kept, paths_kept = [], [], []
        for mean, j in ranked:
            if isinstance(j, tuple):  # a finished path
                finished.append((mean, j))
                continue
            path = paths[j // size] + (candidates[j % size],)
            if path[-1] in eos:
                finished.append((mean, path))
            else:
                kept.append(j)
                paths_kept.append(path)
        if not kept:
            scores, paths = np.zeros(0), []
            break
        picks = np.array(kept)
        scores, paths = total.take(picks), paths_kept
        state = proxy.advance(found, picks)
    final = finished + [(score / max(length, 1), path) for score, path in zip(scores.tolist(), paths)]
    return [list(path) for _, path in sorted(final, key=lambda entry: -entry[0])]


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
        return self.paths(logprobs, history, proxy, eos_token_ids, 1)[0]

    def paths(
        self,
        logprobs: torch.Tensor,
        history: Sequence[int],
        proxy: CausalProxy,
        eos_token_ids: Iterable[int],
        n: int,
    ) -> list[list[int]]:
        """The ``n`` best distinct paths, best first (fewer when the lattice has fewer). The beam is
        max(beam_width, n) wide, so for n <= beam_width the first path is the one ``__call__`` returns.
        Disabled: only the argmax path."""
        if not self.enabled:
            return [logprobs.argmax(dim=-1).tolist()]
        eos = list(eos_token_ids)
        lattice = prune_lattice(logprobs, tau=self.tau, max_candidates=self.max_candidates, eos_token_ids=eos)
        width = max(self.beam_width, n)
        return beam_search(lattice, proxy, history, beam_width=width, lam=self.lam, eos_token_ids=eos)[:n]
