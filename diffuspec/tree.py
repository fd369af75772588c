"""Tree verification: the draft path and the drafter's runners-up, as a token tree verified in one target pass.

Rejections mostly fall in the first positions of a draft, and there the target's token is often the drafter's
2nd or 3rd candidate. ``grow_tree`` therefore branches where the drafter is unsure (EAGLE-2 / Sequoia style): a
node's value is the product of the drafter's marginal probabilities along its root path, and the tree is the
draft path (the spine: CPS's or the argmax path) plus the M best other nodes by value, each position's
candidates being its top tokens. Values never grow along a path, so the best M form a prefix-closed set (a
tree), found best-first; the sum of the values estimates the tokens a step accepts. The tree's root-to-leaf
paths (spine first) are merged by ``build_tree``. The target reads [last committed token, *tree nodes] in one
forward with a tree attention mask (each node sees the cached context, the root and its own ancestors) and tree
position ids (context length + depth), and the accepted path is walked from the root: at each depth, the child whose token is the target's
token there. The target's token is a function of the committed prefix only (the argmax of its logits, or under
sampling of log p + Gumbel noise that depends on the seed and the absolute output position:
``verification.py``), and a node's row sees exactly that prefix, so the walk commits what one-token-at-a-time
decoding would: a tree changes how many tokens a pass commits, never which. Afterwards the cache keeps the
context, the root and the accepted nodes, in order; the other branches are dropped.

Supported targets: attention "eager" or "sdpa" (both take a custom 4D additive mask as-is in transformers 5.23)
and every cache layer a plain full-attention ``DynamicLayer`` or ``BufferedLayer``, or also sliding-window layers
(Gemma 2/3, Qwen2) in a model that takes one mask per attention type (``{"full_attention": ...,
"sliding_attention": ...}``): a sliding layer holds only the last W - 1 positions, so it gets a mask of its own
over those (a node sees a held position while it is within W of it) and its compaction keeps its window. Other
targets (flash attention, which takes no 4D mask; sliding windows in a model that builds its own per-layer masks)
fall back to single-path verification (``supports_tree``). A drafter that reads the target's hidden states gets
those of the root and the accepted nodes, the positions the cache keeps (``verify_tree``'s ``hidden_layers``).
"""

from __future__ import annotations

import heapq
import inspect
import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from .caches import BufferedLayer, cache_kwargs, rollback
from .verification import SamplingParams, position_gumbel

TREE_ATTENTION = ("eager", "sdpa")  # implementations that use a 4D additive mask as given


@dataclass(frozen=True)
class TokenTree:
    """Draft paths merged into a prefix tree. Node i (0-based, parents before children) holds ``tokens[i]``;
    ``parents[i]`` is its parent node (-1: the root, the last committed token), ``depths[i]`` its 1-based depth,
    ``ranks[i]`` the index of the best path through it."""

    tokens: torch.Tensor  # [T]
    parents: tuple[int, ...]
    depths: tuple[int, ...]
    ranks: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def depth(self) -> int:
        return max(self.depths, default=0)

    def branch(self, node: int) -> list[int]:
        """The nodes from the root's child down to ``node`` (empty for the root, -1)."""
        nodes = []
        while node >= 0:
            nodes.append(node)
            node = self.parents[node]
        return nodes[::-1]


def build_tree(paths: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> TokenTree:
    """Merge ``paths`` (best first) into a prefix tree; nodes are numbered in order of first appearance, so
    the best path is nodes 0..len-1 (a tree of one path is that path)."""
    tokens: list[int] = []
    parents: list[int] = []
    depths: list[int] = []
    ranks: list[int] = []
    child: dict[tuple[int, int], int] = {}
    for rank, path in enumerate(paths):
        node = -1
        for depth, token in enumerate(path, start=1):
            key = (node, int(token))
            if key not in child:
                child[key] = len(tokens)
                tokens.append(int(token))
                parents.append(node)
                depths.append(depth)
                ranks.append(rank)
            node = child[key]
    return TokenTree(torch.tensor(tokens, dtype=torch.long, device=device), tuple(parents), tuple(depths),
                     tuple(ranks))


# Top tokens per position a branch may take. The target's token at a rejection was often the drafter's 2nd or
# 3rd, but not only: on 6 short prompts (k = 16, 16 branches) 2 / 4 / 8 / 16 candidates gave MAT 3.22 / 3.52 /
# 3.74 / 3.80; more candidates cost more heap pushes per step for little.
TREE_CANDIDATES = 8


@dataclass(frozen=True)
class GrownTree:
    """The spine and the branch nodes ``grow_tree`` chose, in the order chosen. Node i holds ``tokens[i]`` under
    ``parents[i]`` (-1: the root; always an earlier node) with value ``values[i]``; nodes 0..len(spine)-1 are the
    spine."""

    spine: tuple[int, ...]
    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def branch_values(self) -> tuple[float, ...]:
        """The branch nodes' values, best first: the tokens each is expected to add to a step."""
        return self.values[len(self.spine) :]

    def paths(self, branches: int) -> list[list[int]]:
        """The root-to-leaf token paths of the spine and the first ``branches`` branch nodes: the spine first,
        then the other leaves in the order they were chosen (``build_tree`` ranks paths in this order)."""
        size = len(self.spine) + branches
        inner = set(self.parents[:size])
        paths = []
        for leaf in (i for i in range(size) if i not in inner):  # the spine's leaf has the lowest index
            path, node = [], leaf
            while node >= 0:
                path.append(self.tokens[node])
                node = self.parents[node]
            paths.append(path[::-1])
        return paths


@dataclass(frozen=True)
class TreeLimits:
    """How large a verified token tree may grow (``DiffuSpecConfig.draft_paths`` and ``tree_branches``): at most
    ``paths`` root-to-leaf paths (1: a single path, no tree) and ``branches`` nodes added to the draft path
    (None: as many as ``paths`` full-depth paths need)."""

    paths: int = 1
    branches: int | None = None

    def budget(self, drafted: int) -> int:
        """The most nodes to add to a draft path of ``drafted`` tokens (0: no tree)."""
        if self.paths == 1:
            return 0
        return (self.paths - 1) * drafted if self.branches is None else self.branches


SINGLE_PATH = TreeLimits()


def grow_tree(logprobs: torch.Tensor, spine: Sequence[int], branches: int, *, paths: int | None = None,
              candidates: int = TREE_CANDIDATES, ends: Collection[int] = ()) -> GrownTree:
    """The spine plus the ``branches`` best other nodes by value (module docstring), best first, in a tree of at
    most ``paths`` root-to-leaf paths (None: no limit). ``logprobs`` [k, V] are the drafter's per-position
    log-probabilities; a node at depth d takes one of position d's ``candidates`` most likely tokens, nodes go
    at most k deep, and none follows a token of ``ends`` (EOS). A node under a parent that already has a child
    (the root has the spine's) opens a new path; once there are ``paths``, such nodes are passed over, while
    extending a path's leaf still grows the tree. Ties go to the node offered first (the shallower parent, then
    the likelier token), so the tree is deterministic."""
    top_logprobs, top_tokens = logprobs.float().topk(min(candidates, logprobs.shape[-1]), dim=-1)
    # likelier first, the lower id on a tie (topk leaves the order of equal values open)
    top = [sorted(zip(t, p), key=lambda c: (-c[1], c[0])) for t, p in zip(top_tokens.tolist(), top_logprobs.exp().tolist())]
    spine = tuple(int(t) for t in spine)
    spine_probs = logprobs[torch.arange(len(spine)), torch.tensor(spine, dtype=torch.long)].float().exp().tolist()
    tokens, parents = list(spine), list(range(-1, len(spine) - 1))
    values, depths = list(itertools.accumulate(spine_probs, lambda a, b: a * b)), list(range(1, len(spine) + 1))
    frontier: list[tuple[float, int, int, int]] = []  # (-value, offer order, parent, token)
    order = itertools.count()

    def offer(parent: int, skip: int | None) -> None:
        """Queue ``parent``'s children (all but ``skip``, which is already a node)."""
        position = depths[parent] if parent >= 0 else 0  # the children's 0-based draft position
        if position >= len(top) or (parent >= 0 and tokens[parent] in ends):
            return
        base = values[parent] if parent >= 0 else 1.0
        for token, p in top[position]:
            if token != skip and p > 0.0:
                heapq.heappush(frontier, (-base * p, next(order), parent, token))

    for parent in range(-1, len(spine)):
        offer(parent, spine[parent + 1] if parent + 1 < len(spine) else None)
    has_child = [True] * (len(spine) - 1) + [False] * bool(spine)  # the spine's nodes; the root always branches
    leaves = 1 if spine else 0
    while frontier and len(tokens) < len(spine) + branches:
        negative_value, _, parent, token = heapq.heappop(frontier)
        opens_path = parent < 0 or has_child[parent]
        if opens_path and paths is not None and leaves >= paths:
            continue  # leaves never go away, so this node never fits; nor do its children, never offered
        leaves += opens_path
        if parent >= 0:
            has_child[parent] = True
        has_child.append(False)
        tokens.append(token)
        parents.append(parent)
        values.append(-negative_value)
        depths.append(depths[parent] + 1 if parent >= 0 else 1)
        offer(len(tokens) - 1, None)
    return GrownTree(spine, tuple(tokens), tuple(parents), tuple(values))


def tree_attention(tree: TokenTree, past_length: int, dtype: torch.dtype, device: torch.device,
                   window: tuple[int, int] | None = None) -> tuple[torch.Tensor | dict[str, torch.Tensor], torch.Tensor]:
    """The additive mask [1, 1, T + 1, past + T + 1] (0: attend, dtype min: not) and position ids [1, T + 1]
    for the feed [root, *nodes] after ``past_length`` cached positions. ``window`` = (W, positions the sliding
    layers hold, the last of the past): the masks per attention type, the sliding layers' [1, 1, T + 1, held +
    T + 1] seeing a held position only within W of the row's own."""
    size = tree.size + 1
    sees = torch.zeros(size, size, dtype=torch.bool)
    sees[:, 0] = True  # every row sees the root
    for i, parent in enumerate(tree.parents, start=1):
        sees[i] = sees[parent + 1]
        sees[i, i] = True
    positions = past_length + torch.tensor((0, *tree.depths), dtype=torch.long)

    def additive(visible: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)
        return mask[None, None].to(device)

    full = additive(torch.cat([torch.ones(size, past_length, dtype=torch.bool), sees], dim=1))
    if window is None:
        return full, positions[None].to(device)
    width, held = window
    keys = torch.cat([torch.arange(past_length - held, past_length), positions])
    near = positions[:, None] - keys[None, :] < width
    sliding = additive(torch.cat([torch.ones(size, held, dtype=torch.bool), sees], dim=1) & near)
    return {"full_attention": full, "sliding_attention": sliding}, positions[None].to(device)


def walk(tree: TokenTree, choices: Sequence[int]) -> tuple[list[int], int]:
    """Follow the target: ``choices[r]`` is the target's token after feed row r (row 0 the root, row i + 1
    node i). Returns the accepted nodes, root to leaf, and the target's own token after them."""
    children: dict[tuple[int, int], int] = {}
    for i, (parent, token) in enumerate(zip(tree.parents, tree.tokens.tolist())):
        children[(parent, token)] = i
    accepted, node = [], -1
    while (node, choices[node + 1]) in children:
        node = children[(node, choices[node + 1])]
        accepted.append(node)
    return accepted, choices[node + 1]


def compact_cache(cache: DynamicCache, past_length: int, accepted: Sequence[int]) -> None:
    """Keep the first ``past_length`` positions, the root and the accepted nodes (in order); drop the rest. A
    sliding-window layer (recording its past: ``caches.new_cache``) holds fewer past positions: the same, counted
    from its own, and then its window."""
    if list(accepted) == list(range(len(accepted))):  # the first path's prefix: a plain crop
        rollback(cache, cache.get_seq_length() - (past_length + 1 + len(accepted)))
        return
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        fed = layer.get_seq_length() - past_length  # the root and the tree
        held = layer.keys.shape[-2] - fed
        index = torch.tensor([*range(held + 1), *(held + 1 + i for i in accepted)], device=layer.keys.device)
        layer.keys = layer.keys.index_select(-2, index)
        layer.values = layer.values.index_select(-2, index)
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = past_length + 1 + len(accepted)
            layer.keys = layer.keys[:, :, -layer.sliding_window + 1 :]
            layer.values = layer.values[:, :, -layer.sliding_window + 1 :]


def takes_mask_per_attention_type(model: PreTrainedModel) -> bool:
    """Whether ``model`` uses an ``attention_mask`` given as {attention type: mask} as it is (transformers 5's
    models with sliding-window layers that build their masks as such a mapping, e.g. Gemma 2/3, Qwen2)."""
    try:
        source = inspect.getsource(type(model.base_model).forward)
    except (OSError, TypeError):
        return False
    return "isinstance(causal_mask_mapping := attention_mask, dict)" in source


def supports_tree(model: PreTrainedModel, cache: DynamicCache) -> bool:
    """Whether ``model`` can verify a tree into ``cache`` (module docstring: otherwise single path)."""
    if getattr(model.config, "_attn_implementation", None) not in TREE_ATTENTION:
        return False
    kinds = {type(layer) for layer in cache.layers}
    if kinds <= {DynamicLayer, BufferedLayer}:
        return True
    return kinds <= {DynamicLayer, BufferedLayer, DynamicSlidingWindowLayer} and takes_mask_per_attention_type(model)


@dataclass(frozen=True)
class TreeVerdict:
    accepted_nodes: list[int]  # root to leaf
    next_token: int  # the target's own token after them
    rank: int  # the best path through the deepest accepted node (0 when none was accepted)
    hidden: torch.Tensor | None = None  # the asked-for hidden states of the root and the accepted nodes


def verify_tree(
    target: PreTrainedModel,
    cache: DynamicCache,
    last: torch.Tensor,
    tree: TokenTree,
    sampling: SamplingParams,
    seed: int,
    generated: int,
    hidden_layers: tuple[int, ...] = (),
) -> TreeVerdict:
    """One target forward over [last, *tree], the acceptance walk (greedy, or Gumbel-max under sampling with
    noise by absolute output position ``generated + depth``), and the cache compacted to the accepted path; with
    ``hidden_layers``, the hidden states there (concatenated) of the root and the accepted nodes."""
    past = cache.get_seq_length()
    sliding = [layer for layer in cache.layers if isinstance(layer, DynamicSlidingWindowLayer)]
    window = None
    if sliding:
        held = sliding[0].keys.shape[-2] if sliding[0].is_initialized else 0
        window = (sliding[0].sliding_window, held)
    mask, positions = tree_attention(tree, past, target.dtype, last.device, window)
    feed = torch.cat([last, tree.tokens])
    extra = {"output_hidden_states": list(hidden_layers)} if hidden_layers else {}
    out = target(input_ids=feed[None], attention_mask=mask, position_ids=positions, use_cache=True,
                 **cache_kwargs(target, cache), **extra)
    logits = out.logits[0]
    if sampling.greedy:
        scores = logits
    else:
        noise = position_gumbel(seed, generated, tree.depth + 1, logits.shape[-1], logits.device)
        scores = sampling.probs(logits).log() + noise[positions[0] - past]
    accepted, next_token = walk(tree, scores.argmax(dim=-1).tolist())
    compact_cache(cache, past, accepted)
    hidden = None
    if hidden_layers:
        rows = torch.tensor([0, *(1 + i for i in accepted)], device=logits.device)
        hidden = torch.cat([out.hidden_states[i][0, rows] for i in hidden_layers], dim=-1)
    return TreeVerdict(accepted, next_token, tree.ranks[accepted[-1]] if accepted else 0, hidden)
