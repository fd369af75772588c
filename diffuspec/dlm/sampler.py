"""The diffusion LM's own sampler, one transition at a time (LLaDA-style low-confidence remasking).

At every masked position pick a token (the argmax, or a sample from the warped distribution), then keep the
``n`` picks the model is most confident of (the chosen token's probability; ties: leftmost first) and leave
the rest masked. The mask token itself is never a pick. dlm and Spiffy both call ``unmask_step`` and nothing
else to move, so they draw the same random numbers in the same order.
"""

from __future__ import annotations

import torch

from ..verification import SamplingParams


def distribution(logits: torch.Tensor, mask_token_id: int, sampling: SamplingParams) -> torch.Tensor:
    """Probabilities [m, V] the sampler picks from, from the logits [m, V] of a block's masked positions:
    softmax when greedy (the confidence), else temperature, top-k, top-p as transformers applies them."""
    logits = logits.float().clone()
    logits[..., mask_token_id] = float("-inf")
    return logits.softmax(dim=-1) if sampling.greedy else sampling.probs(logits)


def unmask_step(
    block: torch.Tensor,
    probs: torch.Tensor,
    n: int,
    mask_token_id: int,
    sampling: SamplingParams,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``block`` [L] with its ``n`` most confident masked positions filled from ``probs`` [m, V] (its masked
    positions' distributions, in block order)."""
    masked = (block == mask_token_id).nonzero().squeeze(1)
    if sampling.greedy:
        confidence, tokens = probs.max(dim=-1)
    else:
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        confidence = probs.gather(1, tokens[:, None]).squeeze(1)
    chosen = confidence.sort(descending=True, stable=True).indices[:n]
    out = block.clone()
    out[masked[chosen]] = tokens[chosen]
    return out
