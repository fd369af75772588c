"""Decoding with a diffusion LM alone (dlm) and Spiffy, its lossless self-speculative acceleration.

Both are one walk. Each forward evaluates the real state of the block plus draft states (none for dlm);
the sampler then moves from the real state with its true distribution, and while the state it reaches is one
of the evaluated drafts, moves again without a new forward. Tokens only ever come from ``unmask_step`` on the
true state's distribution, drawn in dlm's order, so Spiffy's output is dlm's output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from transformers import PreTrainedModel

from ..errors import DiffuSpecError
from ..verification import SamplingParams
from .graph import GraphShape, Guide, Ranking
from .rows import BlockRows
from .sampler import distribution, unmask_step
from .settings import DenoisingStep, DLMSettings

# Called with (state, its masked positions' distribution, the next state) for every transition (calibration).
Observer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def dlm_steps(
    model: PreTrainedModel,
    mask_token_id: int,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    shifted: bool,
    sampling: SamplingParams,
    generator: torch.Generator | None,
    eos_token_ids: frozenset[int],
    settings: DLMSettings,
) -> Iterator[DenoisingStep]:
    """The diffusion LM's own semi-autoregressive sampler: one forward per denoising step."""
    _check(model, mask_token_id, prompt_ids, max_new_tokens)
    return _walk(model, mask_token_id, prompt_ids, max_new_tokens, shifted, sampling, generator, eos_token_ids,
                 settings, graph=None)


def spiffy_steps(
    model: PreTrainedModel,
    mask_token_id: int,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    shifted: bool,
    sampling: SamplingParams,
    generator: torch.Generator | None,
    eos_token_ids: frozenset[int],
    settings: DLMSettings,
) -> Iterator[DenoisingStep]:
    """The same sampler, several denoising steps per forward where the draft graph guessed them."""
    _check(model, mask_token_id, prompt_ids, max_new_tokens)
    return _walk(model, mask_token_id, prompt_ids, max_new_tokens, shifted, sampling, generator, eos_token_ids,
                 settings, graph=settings.draft_graph())


def _check(model: PreTrainedModel, mask_token_id: int, prompt_ids: list[int], max_new_tokens: int) -> None:
    if not prompt_ids:
        raise DiffuSpecError("the prompt is empty: a diffusion LM needs at least one token to continue")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise DiffuSpecError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    vocab = model.get_output_embeddings().weight.shape[0]
    if not 0 <= mask_token_id < vocab:
        raise DiffuSpecError(f"mask token id {mask_token_id} is outside the model's vocabulary of {vocab}")


def _walk(
    model: PreTrainedModel,
    mask_token_id: int,
    prompt_ids: list[int],
    max_new_tokens: int,
    shifted: bool,
    sampling: SamplingParams,
    generator: torch.Generator | None,
    eos_token_ids: frozenset[int],
    settings: DLMSettings,
    graph: GraphShape | None,
    observe: Observer | None = None,
) -> Iterator[DenoisingStep]:
    rows = BlockRows(model, mask_token_id, shifted=shifted, prefix_cache=settings.prefix_cache)
    device = model.get_output_embeddings().weight.device
    committed = torch.tensor(prompt_ids, dtype=torch.long, device=device)
    n = settings.tokens_per_step
    produced = 0
    while produced < max_new_tokens:
        block = torch.full((min(settings.block_length, max_new_tokens - produced),), mask_token_id,
                           dtype=torch.long, device=device)
        streamed = 0  # block positions already yielded
        guide = None  # the last state evaluated in this block and its distribution: drafts are built from it
        while True:
            drafts = _drafts(graph, block, guide, mask_token_id, settings)
            logits = rows(committed, torch.cat([block[None], drafts]))
            row, steps = 0, 0
            while True:
                probs = distribution(logits[row], mask_token_id, sampling)
                after = unmask_step(block, probs, n, mask_token_id, sampling, generator)
                if observe is not None:
                    observe(block, probs, after)
                guide = (block, probs)
                block, steps = after, steps + 1
                row = _row_of(block, drafts, mask_token_id)
                if row is None:
                    break
            tokens, streamed, finished = _stream(block, streamed, mask_token_id, eos_token_ids)
            yield DenoisingStep(tokens, forwards=1, denoising_steps=steps, graph_size=drafts.shape[0])
            if finished:
                return
            if streamed == block.numel():
                break
        committed = torch.cat([committed, block])
        produced += block.numel()


def _drafts(
    graph: GraphShape | None, block: torch.Tensor, guide: Guide | None, mask_token_id: int,
    settings: DLMSettings,
) -> torch.Tensor:
    """The draft states to evaluate beside ``block``: none for dlm or at a block's first step (no guide)."""
    if graph is None or guide is None or not graph.nodes:
        return block.new_empty((0, block.numel()))
    ranking = Ranking.of(block, guide, mask_token_id, settings.token_ranks)
    return graph.draft_states(block, ranking, settings.prune_below)


def _row_of(block: torch.Tensor, drafts: torch.Tensor, mask_token_id: int) -> int | None:
    """The evaluated row holding ``block`` (0 is the real state, drafts follow), or None: a new forward, or
    the block is finished."""
    if drafts.shape[0] == 0 or not bool((block == mask_token_id).any()):
        return None
    hits = (drafts == block).all(dim=1).nonzero()
    return int(hits[0]) + 1 if hits.numel() else None


def _stream(
    block: torch.Tensor, streamed: int, mask_token_id: int, eos_token_ids: frozenset[int]
) -> tuple[list[int], int, bool]:
    """The newly final left-to-right tokens of ``block`` after position ``streamed``, up to and including
    the first EOS; the new streamed count; whether an EOS ended the generation."""
    tokens = block.tolist()
    end = tokens.index(mask_token_id) if mask_token_id in tokens else len(tokens)
    new = tokens[streamed:end]
    for i, token in enumerate(new):
        if token in eos_token_ids:
            return new[: i + 1], streamed + i + 1, True
    return new, end, False
