"""Training objectives: causal LM, masked diffusion (MDLM / Dream shifted), SpecDiff-2 streak distillation.

Rows may be padded: ``valid`` ([b, n] bool) marks real tokens. Padding never counts in a loss, and a
bidirectional model is kept from attending to it with an explicit 4D key-padding mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel


def causal_lm_loss(model: PreTrainedModel, tokens: torch.Tensor, learn: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy; ``learn`` ([b, n] bool) restricts it to some target tokens (right padding
    needs no attention mask in a causal model: nothing real attends to it)."""
    labels = tokens if learn is None else tokens.masked_fill(~learn, -100)
    return model(input_ids=tokens, labels=labels).loss


def key_padding_mask(valid: torch.Tensor) -> torch.Tensor:
    """[b, n] valid tokens -> [b, 1, n, n] bool: every position attends to every real token."""
    return valid[:, None, None, :].expand(-1, 1, valid.shape[1], -1)


def _block_logits(logits: torch.Tensor, start: int, end: int, shifted: bool) -> torch.Tensor:
    """The logits that predict positions [start, end): the same positions, or one earlier when shifted."""
    return logits[:, start - 1 : end - 1] if shifted else logits[:, start:end]


def masked_diffusion_loss(
    model: PreTrainedModel,
    tokens: torch.Tensor,
    mask_id: int,
    generator: torch.Generator,
    shifted: bool = False,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """MDLM/LLaDA objective: t ~ U(0.05, 1) per sequence, mask each token with probability t, cross-entropy on
    the masked tokens weighted 1/t. Half the rows mask only a suffix block (the prefix stays clean), the
    shape of a drafting call. ``shifted``: Dream style, position i's logits predict token i + 1."""
    b, n = tokens.shape
    valid = torch.ones(b, n, dtype=torch.bool) if valid is None else valid.cpu()
    lengths = valid.sum(dim=1, keepdim=True)
    t = 0.05 + 0.95 * torch.rand(b, 1, generator=generator)  # t >= 0.05 bounds the 1/t weight's variance
    masked = torch.rand(b, n, generator=generator) < t
    block = (torch.rand(b, 1, generator=generator) * (lengths // 2).clamp(min=1)).long() + 1
    suffix_only = torch.rand(b, 1, generator=generator) < 0.5
    masked &= ~suffix_only | (torch.arange(n) >= lengths - block)
    masked &= valid
    masked[:, 0] = False  # the first token is always context (a shifted model cannot predict it)
    last = (lengths - 1).clamp(min=1)
    masked.scatter_(1, last, masked.gather(1, last) | ~masked.any(dim=1, keepdim=True))  # one per row at least
    masked, valid = masked.to(tokens.device), valid.to(tokens.device)
    out = model(input_ids=tokens.masked_fill(masked, mask_id), attention_mask=key_padding_mask(valid))
    logits = _block_logits(out.logits, 1, n, shifted)
    ce = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    return (ce * masked[:, 1:] / t.to(ce.device)).sum() / valid.sum()


def streak_loss(
    model: PreTrainedModel,
    prefix: torch.Tensor,
    continuation: torch.Tensor,
    mask_id: int,
    shifted: bool = False,
    prefix_valid: torch.Tensor | None = None,
    block_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SpecDiff-2 streak distillation. The drafter sees ``prefix`` + g masks and should put probability on
    the verifier's own continuation x_1..x_g. Returns (loss, expected accepted streak
    E = sum_m prod_{j<=m} q_j). The loss is the paper's stable variant: -sum_j stopgrad(prod_{i<j} q_i) log q_j,
    plus a small plain term (0.1 log q_j) so late positions keep learning while early ones still fail.
    ``prefix_valid``: a left-padded prefix (positions restart at its first real token); ``block_valid``:
    block positions past the end of a continuation, which teach nothing."""
    g = continuation.shape[1]
    masks = torch.full_like(continuation, mask_id)
    p = prefix.shape[1]
    kwargs = {}
    if prefix_valid is not None:
        valid = torch.cat([prefix_valid, torch.ones_like(masks, dtype=torch.bool)], dim=1)
        kwargs = {"attention_mask": key_padding_mask(valid), "position_ids": (valid.long().cumsum(1) - 1).clamp(min=0)}
    logits = _block_logits(model(input_ids=torch.cat([prefix, masks], dim=1), **kwargs).logits, p, p + g, shifted)
    log_q = logits.float().log_softmax(-1).gather(-1, continuation[..., None]).squeeze(-1)
    if block_valid is not None:
        log_q = log_q * block_valid  # q = 1 past the end: the streak neither grows nor breaks there
    streak = log_q.cumsum(dim=1).exp()  # prod_{j<=m} q_j
    reach = torch.cat([torch.ones_like(streak[:, :1]), streak[:, :-1]], dim=1).detach()  # prod_{i<j} q_i
    loss = -((reach + 0.1) * log_q).sum(dim=1).mean() / g
    if block_valid is not None:
        streak = streak * block_valid
    return loss, streak.sum(dim=1).mean().detach()
