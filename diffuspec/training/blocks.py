"""Training block drafters (``train-drafter``'s and DFlash's): drafting calls cut from the target's rows, the
objectives (SpecDiff-2 streak distillation, DFlash's decayed cross-entropy), greedy acceptance, and a resumable
optimisation loop."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DiffuSpecError
from .target_text import TargetRows


def streak_objective(log_q: torch.Tensor, learnable: torch.Tensor, breaks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SpecDiff-2 streak distillation over blocks ([..., P] per position): ``log_q`` the drafter's log-probability
    of the target's token, ``learnable`` where that token is real and in the draft vocabulary, ``breaks`` where
    the target's token is real but outside it (the streak ends there: nothing can match it). Returns (loss,
    expected streak E = sum_m prod_{j<=m} q_j, per block on average). The loss is the stable variant
    -sum_j (stopgrad(prod_{i<j} q_i) + 0.1) log q_j: the 0.1 keeps late positions learning while early ones
    still fail."""
    log_q = log_q.masked_fill(~learnable, 0.0)  # q = 1: neither grows nor breaks the streak
    q_prefix = log_q.cumsum(dim=-1).exp().masked_fill(breaks.cumsum(dim=-1) > 0, 0.0)  # prod_{j<=m} q_j
    reach = torch.cat([torch.ones_like(q_prefix[..., :1]), q_prefix[..., :-1]], dim=-1).detach()
    count = learnable.sum().clamp(min=1)
    loss = -((reach + 0.1) * log_q * learnable).sum() / count
    expected = (q_prefix * (learnable | breaks)).sum(dim=-1).mean()
    return loss, expected.detach()


def decayed_ce(log_q: torch.Tensor, learnable: torch.Tensor, gamma: float) -> torch.Tensor:
    """DFlash's objective: cross-entropy per block position j (0-based), weighted exp(-j / gamma)."""
    weight = torch.exp(-torch.arange(log_q.shape[-1], device=log_q.device) / gamma) * learnable
    return -(log_q * weight).sum() / weight.sum().clamp(min=1e-9)


def accepted_lengths(predicted: torch.Tensor, labels: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per block, how many leading drafts greedy verification accepts: positions where the draft equals the
    target's token, counted while they agree (a block ends where its row does)."""
    agree = (predicted == labels) & real
    return agree.long().cumprod(dim=-1).sum(dim=-1)


@dataclass
class Batch:
    states: torch.Tensor  # [b, T, taps * hidden] target states of positions 0..T-1
    block_tokens: torch.Tensor  # [b, N * B] anchor then masks, per block
    block_positions: torch.Tensor  # [b, N * B]
    sees: torch.Tensor  # [b, N * B, T + N * B]
    labels: torch.Tensor  # [b, N, P] the target's tokens the predicting rows should give
    real: torch.Tensor  # [b, N, P] labels inside the row's continuation


def make_batch(rows: TargetRows, picked: list[int], blocks: int, block_size: int, shifted: bool, mask_id: int,
               generator: torch.Generator, *, anchor_sees_block: bool = False) -> Batch:
    """``blocks`` drafting calls per row, anchored at random committed positions of its continuation (from the last
    prompt token to the last but one token): each block sees the states of the positions before its anchor, and
    itself (its anchor only itself in the block unless ``anchor_sees_block``, DFlash's layout)."""
    b, size = len(picked), block_size
    width = max(rows.states[i].shape[0] for i in picked)
    states = torch.zeros(b, width, rows.states[picked[0]].shape[-1])
    tokens = torch.zeros(b, width + 1, dtype=torch.long)
    lengths = torch.tensor([len(rows.tokens[i]) for i in picked])
    for r, i in enumerate(picked):
        states[r, : rows.states[i].shape[0]] = rows.states[i].float()
        tokens[r, : len(rows.tokens[i])] = torch.tensor(rows.tokens[i])
    lo = (torch.tensor([rows.prompt_lens[i] for i in picked]) - 1).clamp(min=0)
    span = (lengths - 1 - lo).clamp(min=1)
    anchors = lo[:, None] + (torch.rand(b, blocks, generator=generator) * span[:, None]).long()  # [b, N]
    offsets = torch.arange(size)
    positions = anchors[:, :, None] + offsets  # [b, N, B]
    block_tokens = torch.full((b, blocks, size), mask_id, dtype=torch.long)
    block_tokens[:, :, 0] = tokens.gather(1, anchors)
    sees_context = torch.arange(width)[None, None, None] < anchors[:, :, None, None]  # [b, N, 1, T]
    in_block = torch.ones(size, size, dtype=torch.bool)
    in_block[0, 1:] = anchor_sees_block
    same = torch.eye(blocks, dtype=torch.bool)[:, None, :, None] & in_block[None, :, None, :]  # [N, B, N, B]
    sees = torch.cat([sees_context.expand(b, blocks, size, width),
                      same[None].expand(b, -1, -1, -1, -1).reshape(b, blocks, size, blocks * size)], dim=-1)
    # shifted: row j predicts the token at anchor + j + 1; unshifted: mask row j (from 1) the one at anchor + j
    label_pos = positions + 1 if shifted else positions[:, :, 1:]
    real = label_pos < lengths[:, None, None]
    labels = tokens.gather(1, label_pos.clamp(max=width).flatten(1)).view_as(label_pos)
    return Batch(states, block_tokens.flatten(1), positions.flatten(1), sees.reshape(b, blocks * size, -1),
                 labels, real)


def mask_token_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id the masked block positions hold: the tokenizer's mask token, else its pad token."""
    mask = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.pad_token_id
    if mask is None:
        raise ValueError("the target's tokenizer has neither a mask nor a pad token: the drafter needs an id of the "
                         "target's vocabulary for its masked positions; add a mask token to the tokenizer")
    return mask


def fit_resumable(model: torch.nn.Module, step_fn: Callable[[int], dict[str, torch.Tensor]], steps: int, lr: float, *,
                  generator: torch.Generator, checkpoint: Path | None = None, checkpoint_every: int = 25,
                  run: str = "", log: Callable[[str], None] = print) -> dict[str, list[float]]:
    """AdamW with warm-up and cosine decay; ``step_fn(step)`` draws its batch (from ``generator``) and returns
    {"loss": ..., other scalars to follow}. Model, optimiser, schedule, ``generator`` and the curves are saved to
    ``checkpoint`` every ``checkpoint_every`` steps; a rerun of the same ``run`` (what identifies the training:
    its recipe and data) resumes from there, and a checkpoint of another run is refused."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    curves: dict[str, list[float]] = {}
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        if state.get("run") != run:
            raise DiffuSpecError(f"{checkpoint} holds a training with another recipe or other data: delete it to "
                                 "train from the start, or give another work folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        curves, start = state["curves"], state["step"]
        log(f"      resumed at step {start} from {checkpoint}")
    model.train()
    began = time.time()
    for step in range(start, steps):
        values = step_fn(step)
        optimizer.zero_grad(set_to_none=True)
        values["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        for name, value in values.items():
            curves.setdefault(name, []).append(float(value.detach()))
        done = step + 1
        if done % 10 == 0 or done == steps:
            tail = ", ".join(f"{k} {sum(v[-10:]) / len(v[-10:]):.3f}" for k, v in curves.items())
            log(f"      step {done}/{steps}: {tail} ({(time.time() - began) / (done - start):.1f} s/step)")
        if checkpoint is not None and (done % checkpoint_every == 0 or done == steps):
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "generator": generator.get_state(), "curves": curves,
                        "step": done, "run": run}, checkpoint)
    model.eval()
    return curves
