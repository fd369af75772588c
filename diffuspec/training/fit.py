"""The optimisation loop, the verifier's greedy continuations, drafter alignment, loss plots."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .distillation import DistillationSet
from .objectives import streak_loss


def fit(
    model: PreTrainedModel,
    loss_fn: Callable[[int], torch.Tensor],
    steps: int,
    lr: float,
    desc: str,
) -> list[float]:
    """AdamW with warm-up and cosine decay; ``loss_fn(step)`` builds and scores its own batch."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    losses = []
    bar = tqdm(range(steps), desc=desc, leave=False)
    for step in bar:
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def align_drafter(
    drafter: PreTrainedModel,
    data: DistillationSet,
    mask_id: int,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    block: int,
    min_block: int,
    generator: torch.Generator,
    shifted: bool = False,
    context: int = 128,
) -> tuple[list[float], list[float]]:
    """Streak-distil ``drafter`` towards the verifier that wrote ``data``'s continuations; returns (losses,
    streaks). Each batch drafts a random block length in [min_block, block] from a random point of each row's
    continuation (prompt plus the verifier's first c tokens as context), as the decoding loop will ask for."""
    streaks: list[float] = []

    def step_loss(step: int) -> torch.Tensor:
        rows = torch.randint(0, len(data), (batch_size,), generator=generator)
        size = int(torch.randint(min(min_block, block), block + 1, (1,), generator=generator))
        ctx, ctx_valid, blk, blk_valid = (t.to(drafter.device) for t in data.blocks(rows, size, context, generator))
        loss, streak = streak_loss(drafter, ctx, blk, mask_id, shifted, prefix_valid=ctx_valid, block_valid=blk_valid)
        streaks.append(streak.item())
        return loss

    losses = fit(drafter, step_loss, steps, lr, "align drafter (streak distillation)")
    return losses, streaks


def plot_losses(curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(curves))
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(curves) :]:
        ax.axis("off")
    for ax, (name, values) in zip(axes.flat, curves.items()):
        window = max(1, len(values) // 50)
        smooth = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]
        ax.plot(values, alpha=0.3, color="tab:blue")
        ax.plot(smooth, color="tab:blue")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

