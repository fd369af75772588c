"""Calibrating Spiffy's draft graph offline: run the plain sampler on a few prompts, record which states it
really reached after each state (as picks relative to the distribution the walk would draft from), and keep
the nodes that would have saved the most forwards."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..verification import SamplingParams
from .graph import GraphShape, Node, Ranking
from .settings import DLMSettings
from .spiffy import _check, _walk


def calibrate_graph(
    model: PreTrainedModel,
    mask_token_id: int,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    shifted: bool,
    sampling: SamplingParams,
    generator: torch.Generator | None,
    eos_token_ids: frozenset[int],
    settings: DLMSettings,
) -> GraphShape:
    """A draft graph of ``settings.graph_size`` nodes, at most ``settings.graph_depth`` steps deep, for this
    model under these settings and this sampling (the paper used fewer than 50 traces)."""
    paths: list[list[Node]] = []
    trajectory: list[tuple[torch.Tensor, torch.Tensor]] = []  # (state, its distribution) in this block

    def observe(state: torch.Tensor, probs: torch.Tensor, after: torch.Tensor) -> None:
        trajectory.append((state, probs))
        if not bool((after == mask_token_id).any()):
            paths.extend(_block_paths([s for s, _ in trajectory] + [after], [p for _, p in trajectory],
                                      mask_token_id, settings))
            trajectory.clear()

    for prompt in prompts:
        _check(model, mask_token_id, prompt, max_new_tokens)
        trajectory.clear()
        for _ in _walk(model, mask_token_id, prompt, max_new_tokens, shifted, sampling, generator, eos_token_ids,
                       settings, graph=None, observe=observe):
            pass
    return GraphShape.from_paths(paths, settings.graph_size, settings.tokens_per_step)


def _block_paths(
    states: list[torch.Tensor], probs: list[torch.Tensor], mask_token_id: int, settings: DLMSettings
) -> list[list[Node]]:
    """For every state with a guide (the distribution of the state before it), the picks of the states reached
    after it, deepest ``graph_depth``; a path ends at a finished block or a token beyond ``token_ranks``."""
    paths = []
    for t in range(1, len(states) - 1):
        ranking = Ranking.of(states[t], (states[t - 1], probs[t - 1]), mask_token_id, settings.token_ranks)
        path = []
        for later in states[t + 1 : t + 1 + settings.graph_depth]:
            node = ranking.picks(states[t], later)
            if node is None or not bool((later == mask_token_id).any()):
                break
            path.append(node)
        paths.append(path)
    return paths
