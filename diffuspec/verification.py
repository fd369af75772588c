"""Verification: turn the target's logits over a drafted block into accepted tokens.

Both rules return ``(n_accepted, next_token)``: the first ``n_accepted`` draft tokens are kept and
``next_token`` (the target's own token at the first disagreement, or the bonus token after a fully
accepted block) follows them. Each costs one host-device sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """The target's sampling distribution: temperature, then top-k, then top-p (transformers' order)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Row-wise probabilities of ``logits`` ([..., V]) after warping, in float32."""
        scores = logits.float() / self.temperature
        if self.top_k is not None and self.top_k < scores.shape[-1]:
            kth = scores.topk(self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1.0:
            sorted_scores, order = scores.sort(dim=-1, descending=False)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            drop_sorted = cumulative <= 1.0 - self.top_p
            drop_sorted[..., -1] = False  # always keep the most likely token
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        return scores.softmax(dim=-1)


def greedy_accept(draft: torch.Tensor, target_logits: torch.Tensor) -> tuple[int, int]:
    """Longest prefix of ``draft`` ([d]) equal to the target's argmax, then the target's next token.

    ``target_logits`` ([d + 1, V]) row i is the target's prediction for draft position i; row d
    predicts the token after the whole block.
    """
    choice = target_logits.argmax(dim=-1)
    n = (draft == choice[: draft.numel()]).int().cumprod(0).sum()
    n_accepted, next_token = torch.stack([n, choice[n]]).tolist()
    return n_accepted, next_token


def sample_accept(
    draft: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Speculative sampling that leaves the target's distribution unchanged.

    ``draft_probs`` ([d, V]) is the distribution each draft token was *sampled* from: the Leviathan rule,
    accept x with probability min(1, p(x)/q(x)), resample from norm(max(0, p - q)) on rejection.
    ``draft_probs=None`` means the draft is a deterministic function of the prefix (a CPS path, an argmax,
    a prompt lookup): q is a point mass, so accept with probability p(x) and resample from p without x.
    ``target_probs`` ([d + 1, V]) are the target's warped probabilities.
    """
    d = draft.numel()
    rows = torch.arange(d, device=draft.device)
    p_draft = target_probs[rows, draft]
    residual = target_probs.clone()
    if draft_probs is None:
        q_draft = torch.ones_like(p_draft)
        residual[rows, draft] = 0.0
    else:
        q_draft = draft_probs[rows, draft]
        residual[:d] = (target_probs[:d] - draft_probs).clamp_min(0.0)
    u = torch.rand(d, device=draft.device, generator=generator)
    n = (u * q_draft < p_draft).int().cumprod(0).sum()
    # Row d (all accepted) is the untouched target distribution: the bonus token.
    next_token = torch.multinomial(residual[n], 1, generator=generator).squeeze(0)
    n_accepted, token = torch.stack([n, next_token]).tolist()
    return n_accepted, token
