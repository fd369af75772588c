"""Spiffy's draft graph: which future states of a block to evaluate beside the real one.

A draft state is the current state plus some *picks*, each ``(position rank, token rank)`` relative to the
*guide*, the last distribution the walk computed: position rank r is the r-th most confident of the state's
masked positions under the guide, token rank t its t-th most likely token there. A node of depth d holds the
picks of d sampler steps; its parents are the nodes one step shallower it contains (several unmasking orders
may reach one state). The walk can use a node only when it also evaluated the state before it, so a shape
lists every node after one of its parents.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

Pick = tuple[int, int]  # (position rank, token rank) under the guide
Node = tuple[Pick, ...]  # sorted picks
Guide = tuple[torch.Tensor, torch.Tensor]  # an evaluated state [L] and its masked positions' probabilities [m, V]

# How often the demo drafter's greedy sampler (block 16, one token a step) reached a draft node, fitted as
# 0.5 x step^(steps - 1) x rank^(ranks below the most confident) x token^(second-ranked tokens): 32 prompts.
PRIOR = {"step": 0.55, "rank": 0.35, "token": 0.05}


@dataclass(frozen=True)
class Ranking:
    """A state's masked positions ordered by the guide's confidence, with their likeliest tokens."""

    positions: list[int]  # [m] block positions, most confident first
    tokens: list[list[int]]  # [m][token_ranks] token ids, likeliest first
    probs: list[list[float]]  # [m][token_ranks] their guide probabilities

    @classmethod
    def of(cls, block: torch.Tensor, guide: Guide, mask_token_id: int, token_ranks: int) -> Ranking:
        """Rank ``block``'s masked positions by ``guide``, the distribution of an earlier state of it."""
        guide_block, guide_probs = guide
        guide_masked = (guide_block == mask_token_id).nonzero().squeeze(1)
        still = block[guide_masked] == mask_token_id
        masked = guide_masked[still]
        top_probs, top_tokens = guide_probs[still].topk(token_ranks, dim=-1)
        order = top_probs[:, 0].sort(descending=True, stable=True).indices  # ties: leftmost first
        return cls(masked[order].tolist(), top_tokens[order].tolist(), top_probs[order].tolist())

    def picks(self, block: torch.Tensor, later: torch.Tensor) -> Node | None:
        """``later`` (a state reached from ``block``) as picks, or None when a token is beyond the ranks."""
        before, after = block.tolist(), later.tolist()
        node = []
        for rank, position in enumerate(self.positions):
            token = after[position]
            if token != before[position]:
                if token not in self.tokens[rank]:
                    return None
                node.append((rank, self.tokens[rank].index(token)))
        return tuple(node)


@dataclass(frozen=True)
class GraphShape:
    """Draft nodes in priority order (a node after one of its parents) for ``tokens_per_step`` picks a step."""

    tokens_per_step: int
    nodes: tuple[Node, ...]
    parents: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.tokens_per_step
        parents = []
        for i, node in enumerate(self.nodes):
            ranks = [rank for rank, _ in node]
            if not node or len(node) % n or len(set(ranks)) != len(ranks) or tuple(sorted(node)) != node:
                raise ValueError(f"draft node {node} is not {n}-pick steps of sorted, distinct positions")
            if len(node) == n:
                parents.append(())
                continue
            above = tuple(j for j in range(i) if _is_parent(self.nodes[j], node, n))
            if not above:
                raise ValueError(f"draft node {node} comes before every parent it could have")
            parents.append(above)
        object.__setattr__(self, "parents", tuple(parents))

    @classmethod
    @functools.lru_cache(maxsize=64)
    def default(cls, size: int, depth: int, tokens_per_step: int, token_ranks: int) -> GraphShape:
        """Without calibration: the ``size`` likeliest nodes under a prior fitted to the demo drafter's greedy
        paths, where reaching a node costs a factor per step, per rank its positions lie below the most
        confident ones, and per second-ranked token (``PRIOR``). Up to ``depth`` steps deep."""
        n = tokens_per_step
        candidates = []
        for steps in range(1, depth + 1):
            k = steps * n
            for lifts in _lifts(k, max_lift=3):  # how far each pick sits below the most confident positions
                ranks = [i + lift for i, lift in enumerate(lifts)]
                for second in [None, *range(k)] if token_ranks > 1 else [None]:
                    node = tuple((rank, int(i == second)) for i, rank in enumerate(ranks))
                    prior = (PRIOR["step"] ** (steps - 1) * PRIOR["rank"] ** sum(lifts)
                             * (PRIOR["token"] if second is not None else 1.0))
                    candidates.append((-prior, steps, node))
        nodes: list[Node] = []
        for _, _, node in sorted(candidates):  # a parent sorts before its children (at least as likely, shallower)
            if len(nodes) == size:
                break
            if len(node) == n or any(_is_parent(parent, node, n) for parent in nodes):
                nodes.append(node)
        return cls(n, tuple(nodes))

    @classmethod
    def from_paths(cls, paths: Sequence[Sequence[Node]], size: int, tokens_per_step: int) -> GraphShape:
        """The ``size`` nodes that save the most steps on ``paths`` (the realised picks after each state, one
        node per later step), chosen greedily: a node counts on a path once the nodes before it there are
        chosen, and then saves itself plus the chosen nodes that follow it."""
        chosen: list[Node] = []
        chosen_set: set[Node] = set()
        for _ in range(size):
            gains: Counter[Node] = Counter()
            for path in paths:
                first = next((i for i, node in enumerate(path) if node not in chosen_set), None)
                if first is None:
                    continue
                run = next((j for j in range(first + 1, len(path)) if path[j] not in chosen_set), len(path))
                gains[path[first]] += run - first
            if not gains:
                break
            best = min(gains, key=lambda node: (-gains[node], len(node), node))  # ties: shallow, low ranks
            chosen.append(best)
            chosen_set.add(best)
        return cls(tokens_per_step, tuple(chosen))

    def truncated(self, size: int) -> GraphShape:
        return GraphShape(self.tokens_per_step, self.nodes[:size])

    def draft_states(self, block: torch.Tensor, ranking: Ranking, prune_below: float) -> torch.Tensor:
        """The draft blocks [D, L] of ``block`` under ``ranking``: nodes that fit the masked positions left,
        whose parent survived, and whose picks' geometric-mean probability reaches ``prune_below``."""
        masked = len(ranking.positions)
        kept = [False] * len(self.nodes)
        states = []
        base = block.tolist()
        for i, node in enumerate(self.nodes):
            # A node covering every masked position is the finished block: it needs no forward.
            if len(node) >= masked or any(rank >= masked for rank, _ in node):
                continue
            if self.parents[i] and not any(kept[p] for p in self.parents[i]):
                continue
            if geometric_mean([ranking.probs[r][t] for r, t in node]) < prune_below:
                continue
            state = list(base)
            for r, t in node:
                state[ranking.positions[r]] = ranking.tokens[r][t]
            kept[i] = True
            states.append(state)
        return torch.tensor(states, dtype=block.dtype, device=block.device).view(len(states), block.numel())


def geometric_mean(probs: Sequence[float]) -> float:
    """Spiffy v4's pruning score of a draft: the geometric mean of its candidates' probabilities."""
    return math.exp(sum(math.log(max(p, 1e-30)) for p in probs) / len(probs))


def _is_parent(parent: Node, node: Node, n: int) -> bool:
    """Whether ``node`` is ``parent`` plus one step of ``n`` picks."""
    return len(parent) == len(node) - n and set(parent) <= set(node)


def _lifts(k: int, max_lift: int) -> list[tuple[int, ...]]:
    """Non-decreasing offsets (pick i sits at rank i + offset) for k picks, summing to at most ``max_lift``."""
    partitions = [(), (1,), (2,), (1, 1), (3,), (1, 2), (1, 1, 1)]  # ascending parts of 0..3
    return [(0,) * (k - len(p)) + p for p in partitions if len(p) <= k and sum(p) <= max_lift]
