"""The distillation set: prompts of any length and the verifier's own greedy continuations of them.

Drafters learn only from it: a drafter is judged on how well it predicts the target, and the target's greedy
text is far more predictable than the corpus it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel


@torch.no_grad()
def greedy_continuations(
    target: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    length: int,
    *,
    until_eos: bool = False,
    batch: int = 256,
) -> list[list[int]]:
    """The verifier's greedy continuations of ``prompts`` (any lengths: sorted by length, left-padded per
    batch). ``until_eos``: a continuation ends with the first EOS (a chat answer); else it has exactly
    ``length`` tokens and EOS is suppressed (a window of a long file)."""
    pad = target.config.pad_token_id
    eos = target.config.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in tqdm(range(0, len(order), batch), desc="target continuations", leave=False):
        rows = order[start : start + batch]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):
            ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]) :] = 1
        generated = target.generate(
            ids.to(target.device), attention_mask=mask.to(target.device), do_sample=False, max_new_tokens=length,
            min_new_tokens=0 if until_eos else length, pad_token_id=pad,
        )[:, width:].tolist()
        for r, i in enumerate(rows):
            tokens = generated[r]
            if until_eos and eos in tokens:
                tokens = tokens[: tokens.index(eos) + 1]
            out[i] = tokens
    return out


@dataclass
class DistillationSet:
    """Rows of prompt (its last ``context`` tokens) + continuation, right-padded with ``pad_id``."""

    tokens: torch.Tensor  # [n, T]
    prompt_lens: torch.Tensor  # [n]
    lengths: torch.Tensor  # [n] real tokens per row

    @classmethod
    def build(
        cls, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], pad_id: int, context: int
    ) -> DistillationSet:
        rows = [list(p[-context:]) + list(c) for p, c in zip(prompts, continuations)]
        tokens = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
        for r, row in enumerate(rows):
            tokens[r, : len(row)] = torch.tensor(row)
        prompt_lens = torch.tensor([min(len(p), context) for p in prompts])
        return cls(tokens, prompt_lens, torch.tensor(list(map(len, rows))))

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def windows(self, rows: torch.Tensor, length: int, generator: torch.Generator):
        """(tokens, valid, continuation) [b, length]: a random window of each row (all of a shorter row,
        right-padded); ``continuation`` marks the target's own tokens in it."""
        spare = (self.lengths[rows] - length).clamp(min=0)
        starts = (torch.rand(rows.numel(), generator=generator) * (spare + 1)).long()
        positions = starts[:, None] + torch.arange(length)
        width = self.tokens.shape[1]
        tokens = self.tokens[rows[:, None], positions.clamp(max=width - 1)]
        valid = positions < self.lengths[rows, None]
        continuation = valid & (positions >= self.prompt_lens[rows, None])
        return tokens, valid, continuation

    def blocks(self, rows: torch.Tensor, size: int, context: int, generator: torch.Generator):
        """Drafting calls as the decoding loop makes them: for each row a random cut c in its continuation;
        (left-padded context = the row up to prompt + c, at most ``context`` tokens; its valid mask; the next
        ``size`` tokens; their valid mask)."""
        cont = self.lengths[rows] - self.prompt_lens[rows]
        cuts = self.prompt_lens[rows] + (torch.rand(rows.numel(), generator=generator) * (cont - size + 1).clamp(min=1)).long()
        width = int(min(cuts.max(), context))
        ctx_pos = cuts[:, None] - width + torch.arange(width)
        ctx_valid = ctx_pos >= 0
        blk_pos = cuts[:, None] + torch.arange(size)
        blk_valid = blk_pos < self.lengths[rows, None]
        last = self.tokens.shape[1] - 1
        ctx = self.tokens[rows[:, None], ctx_pos.clamp(0, last)].masked_fill(~ctx_valid, 0)
        blk = self.tokens[rows[:, None], blk_pos.clamp(max=last)]
        return ctx, ctx_valid, blk, blk_valid

    def ngram_rows(self, history: int) -> tuple[torch.Tensor, int]:
        """Rows for counting an n-gram table over continuations only: ``history`` tokens before each
        continuation (left-padded with the row's first token when the prompt is shorter) then the
        continuation; returns (rows, start of the continuations)."""
        n = len(self)
        cont_len = int((self.lengths - self.prompt_lens).max())
        pos = self.prompt_lens[:, None] - history + torch.arange(history + cont_len)
        rows = self.tokens[torch.arange(n)[:, None], pos.clamp(0, self.tokens.shape[1] - 1)]
        return rows, history
