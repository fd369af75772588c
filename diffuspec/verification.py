"""Verification: turn the target's logits over a drafted block into accepted tokens.

Every rule returns ``(n_accepted, next_token)``: the first ``n_accepted`` draft tokens are kept and
``next_token`` (the target's own token at the first disagreement, or the bonus token after a fully
accepted block) follows them. Each costs one host-device sync.

Sampling a deterministic draft (a CPS path, an argmax, a prompt lookup) uses the Gumbel-max trick: the token
the target samples at output position j is argmax(log p_j + g_j), with Gumbel noise g_j that depends only on
the seed and j. Verification is then greedy verification of those scores: a draft token is accepted exactly
when it is the token the target samples, which happens with probability p(x) (the point-mass rule), every
committed token is an exact sample from the target, and the output for a seed does not depend on how the
drafts were grouped or how long they were (the length policy may choose differently from run to run).
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
        logits = logits.float()
        # Shift before dividing: any temperature > 0, however tiny, then gives finite scores (the best is 0).
        scores = (logits - logits.max(dim=-1, keepdim=True).values) / self.temperature
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


_GOLDEN = 0x9E3779B97F4A7C15  # spreads (seed, position) over the seed space


def position_gumbel(seed: int, start: int, count: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    """Gumbel noise [count, V] for output positions start .. start + count - 1; row j depends only on
    (seed, position j), so a position verified twice sees the same noise."""
    rows = []
    for position in range(start, start + count):
        generator = torch.Generator(device=device).manual_seed((seed + (position + 1) * _GOLDEN) % 2**64)
        uniform = torch.rand(vocab_size, generator=generator, device=device)
        rows.append(-torch.log(-torch.log(uniform)))
    return torch.stack(rows)


def gumbel_accept(draft: torch.Tensor, target_probs: torch.Tensor, gumbel: torch.Tensor) -> tuple[int, int]:
    """Sampling verification of a deterministic draft (module docstring): greedy verification of
    log p + g. ``target_probs`` and ``gumbel`` are [d + 1, V]."""
    return greedy_accept(draft, target_probs.log() + gumbel)


def sample_accept(
    draft: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """The Leviathan rule, for a draft *sampled* from ``draft_probs`` ([d, V]): accept x with probability
    min(1, p(x)/q(x)), resample from norm(max(0, p - q)) on rejection. ``target_probs`` ([d + 1, V]) are the
    target's warped probabilities. (Applied to a token that was not drawn from q, the rule is biased.)"""
    d = draft.numel()
    rows = torch.arange(d, device=draft.device)
    p_draft = target_probs[rows, draft]
    residual = target_probs.clone()
    q_draft = draft_probs[rows, draft]
    residual[:d] = (target_probs[:d] - draft_probs).clamp_min(0.0)
    u = torch.rand(d, device=draft.device, generator=generator)
    n = (u * q_draft < p_draft).int().cumprod(0).sum()
    # Row d (all accepted) is the untouched target distribution: the bonus token.
    next_token = torch.multinomial(residual[n], 1, generator=generator).squeeze(0)
    n_accepted, token = torch.stack([n, next_token]).tolist()
    return n_accepted, token
