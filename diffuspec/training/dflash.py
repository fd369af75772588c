"""``diffuspec train-dflash``: a DFlash drafter (transformers' ``muse_glimmer_assistant`` architecture, so
``target.generate(..., assistant_model=drafter, speculation_type="dflash")`` loads and runs it unchanged) for
any causal target, trained on the target's own greedy continuations.

The objective is DFlash's: from random anchor positions of each row's continuation, a block
``[anchor token, mask x (block_size - 1)]`` attends to the target's hidden states (at ``target_layer_ids``) of
every position before the anchor and, bidirectionally, to itself; cross-entropy over the target's full
vocabulary on its next ``block_size - 1`` tokens, position i weighted exp(-(i - 1) / gamma) (early positions
decide acceptance). Many blocks per row are trained in one pass with a block-sparse attention mask. The target
is frozen: its embeddings and LM head are shared with the drafter and belong to the target. The rows (the
target's greedy continuations and hidden states) are ``target_text``'s: with the same ``TextRecipe`` and work
folder as ``train-drafter``, both drafters learn from the very same rows.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import MuseGlimmerAssistantConfig, MuseGlimmerAssistantModel, PreTrainedModel

from .blocks import Batch, accepted_lengths, decayed_ce, fit_resumable, make_batch, mask_token_of
from .target_text import TargetRows, TextRecipe, target_text


@dataclass(frozen=True)
class DFlashRecipe:
    """Size and training budget. The default size matches the shipped block drafter's own parameters (two
    decoder layers of the target's width, within 10%); the target's embeddings and LM head, which it borrows,
    are not counted."""

    layers: int = 2
    heads: int = 4
    ffn: int = 1792
    context_layers: int = 3  # target layers read, spread over the target's depth
    block_size: int = 16  # anchor + 15 draft tokens per pass
    gamma: float = 7.0  # DFlash's loss decay for a 16-token block
    seed: int = 0
    text: TextRecipe = TextRecipe()
    steps: int = 600
    batch_rows: int = 4
    blocks_per_row: int = 8
    lr: float = 1e-3
    checkpoint_every: int = 25


def spread_layers(n_layers: int, count: int) -> list[int]:
    """``count`` target layers from the second to the third-to-last (DFlash's choice: early and late features,
    not the final layer, which is shaped for the LM head)."""
    lo = min(1, n_layers - 1)
    hi = max(lo, n_layers - 3)
    return sorted({round(lo + (hi - lo) * i / max(1, count - 1)) for i in range(count)})


def build_dflash_drafter(target: PreTrainedModel, recipe: DFlashRecipe, mask_token_id: int,
                         layer_ids: list[int]) -> MuseGlimmerAssistantModel:
    text = target.config.get_text_config()
    hidden = target.get_input_embeddings().embedding_dim  # the drafter's width is the target's: shared embeddings
    if hidden % recipe.heads:
        raise ValueError(f"the target's width {hidden} is not divisible by heads={recipe.heads}: choose another --heads")
    config = MuseGlimmerAssistantConfig(
        hidden_size=hidden, intermediate_size=recipe.ffn, num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads, head_dim=hidden // recipe.heads,
        max_position_embeddings=text.max_position_embeddings, layer_types=["full_attention"] * recipe.layers,
        rms_norm_eps=getattr(text, "rms_norm_eps", 1e-6), rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        block_size=recipe.block_size, mask_token_id=mask_token_id,
        target_layer_ids=layer_ids,
        bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id,
    )
    return MuseGlimmerAssistantModel(config).to(target.device)


def own_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dflash_loss(drafter: MuseGlimmerAssistantModel, target: PreTrainedModel, batch: Batch, gamma: float) -> torch.Tensor:
    """DFlash's weighted block cross-entropy over the target's full vocabulary for ``batch`` (``make_batch``,
    unshifted, the anchor seeing its whole block)."""
    device = drafter.device
    b, width = batch.states.shape[:2]
    queries = batch.block_tokens.shape[1]
    with torch.no_grad():
        embeds = target.get_input_embeddings()(batch.block_tokens.to(device))
    positions = torch.cat([torch.arange(width).expand(b, width), batch.block_positions], dim=1).to(device)
    mask = batch.sees.to(device)[:, None]
    hidden = drafter(noise_embeds=embeds, context_hidden_states=batch.states.to(device), position_ids=positions,
                     attention_mask={"full_attention": mask}).last_hidden_state
    n, p = batch.labels.shape[1:]
    hidden = hidden.view(b, n, queries // n, -1)[:, :, 1:]  # the masks predict themselves
    logits = target.get_output_embeddings()(hidden)  # [b, N, B - 1, V]
    log_q = logits.float().log_softmax(dim=-1).gather(-1, batch.labels.to(device)[..., None]).squeeze(-1)
    return decayed_ce(log_q, batch.real.to(device), gamma)


def train_dflash(target_dir: str | Path, out_dir: str | Path, recipe: DFlashRecipe = DFlashRecipe(),
                 device: str = "cpu", *, work: str | Path | None = None, tuning: str | None = None) -> dict:
    """Train a DFlash drafter for the target at ``target_dir`` (with the ``tuning`` folder applied, as the engine
    loads it); save it (with the target's tokenizer, a model card and metrics.json) to ``out_dir``. The target's
    rows are cached in ``work`` (default ``out_dir/work``; give ``train-drafter``'s to learn from its rows)."""
    from ..loading import load_models

    out_dir = Path(out_dir)
    work = Path(work) if work is not None else out_dir / "work"
    started = time.time()
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    models = load_models(str(target_dir), tuning=tuning, device=device, dtype=torch.float32, precision="none")
    target, tokenizer = models.target.eval().requires_grad_(False), models.tokenizer
    mask = mask_token_of(tokenizer)
    n_layers = target.config.get_text_config().num_hidden_layers
    layer_ids = spread_layers(n_layers, recipe.context_layers)
    states = [i + 1 for i in layer_ids]  # transformers' DFlash reads hidden_states[i + 1] for target layer i

    print("[1/3] the target's greedy continuations and hidden states")
    rows = target_text(target, tokenizer, recipe.text, work, states)
    train, heldout = rows["train"].select(states), rows["eval"].select(states)
    generated = time.time()

    drafter = build_dflash_drafter(target, recipe, mask, layer_ids)
    print(f"[2/3] DFlash drafter: {own_parameters(drafter) / 1e6:.2f} M own parameters, target layers "
          f"{drafter.config.target_layer_ids}, block {recipe.block_size}; {recipe.steps} steps")

    def step_loss(step: int) -> torch.Tensor:
        picked = torch.randint(0, len(train), (recipe.batch_rows,), generator=generator).tolist()
        batch = make_batch(train, picked, recipe.blocks_per_row, recipe.block_size, False, mask, generator,
                           anchor_sees_block=True)
        return dflash_loss(drafter, target, batch, recipe.gamma)

    curves = fit_resumable(drafter, lambda step: {"loss": step_loss(step)}, recipe.steps, recipe.lr,
                           generator=generator, checkpoint=work / "dflash-checkpoint.pt",
                           checkpoint_every=recipe.checkpoint_every,
                           run=json.dumps([asdict(recipe), drafter.config.target_layer_ids, len(train)], default=str))
    losses = curves["loss"]
    trained = time.time()

    print("[3/3] held-out evaluation, saving")
    heldout_acceptance = evaluate_dflash(drafter, target, heldout, recipe, mask)
    out_dir.mkdir(parents=True, exist_ok=True)
    drafter.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tail = losses[-max(1, len(losses) // 10):]
    metrics = {
        "target": str(target_dir), "tuning": tuning, "recipe": asdict(recipe), "own_parameters": own_parameters(drafter),
        "shared_target_parameters": own_parameters(target.get_input_embeddings()),
        "parameters_counted": "the drafter's own (context projection, layers, norms); the target's embeddings "
                              "and LM head, which it borrows, are the target's",
        "target_layer_ids": drafter.config.target_layer_ids, "distillation_rows": len(train),
        "predicted_tokens_trained": recipe.steps * recipe.batch_rows * recipe.blocks_per_row * (recipe.block_size - 1),
        "final_loss": sum(tail) / len(tail), "heldout": heldout_acceptance,
        "loss_curve": losses[:: max(1, len(losses) // 200)],
        "seconds": {"generation": generated - started, "training": trained - generated, "total": time.time() - started},
        "wall_seconds": time.time() - started,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "README.md").write_text(_model_card(drafter, metrics))
    return metrics


@torch.no_grad()
def evaluate_dflash(drafter: MuseGlimmerAssistantModel, target: PreTrainedModel, rows: TargetRows,
                    recipe: DFlashRecipe, mask: int, blocks: int = 16, seed: int = 1) -> dict:
    """Greedy acceptance on held-out rows, as ``train-drafter`` measures its own (``evaluate_blocks``)."""
    generator = torch.Generator().manual_seed(seed)
    device = drafter.device
    accepted = []
    for start in range(0, len(rows), recipe.batch_rows):
        picked = list(range(start, min(start + recipe.batch_rows, len(rows))))
        batch = make_batch(rows, picked, blocks, recipe.block_size, False, mask, generator, anchor_sees_block=True)
        b, width = batch.states.shape[:2]
        embeds = target.get_input_embeddings()(batch.block_tokens.to(device))
        positions = torch.cat([torch.arange(width).expand(b, width), batch.block_positions], dim=1).to(device)
        hidden = drafter(noise_embeds=embeds, context_hidden_states=batch.states.to(device), position_ids=positions,
                         attention_mask={"full_attention": batch.sees.to(device)[:, None]}).last_hidden_state
        hidden = hidden.view(b, blocks, recipe.block_size, -1)[:, :, 1:]
        predicted = target.get_output_embeddings()(hidden).argmax(dim=-1)
        accepted.append(accepted_lengths(predicted, batch.labels.to(device), batch.real.to(device)).flatten())
    accepted = torch.cat(accepted)
    per_position = [float((accepted > j).float().sum() / (accepted >= j).float().sum().clamp(min=1))
                    for j in range(recipe.block_size - 1)]
    return {"blocks": int(accepted.numel()), "mean_accepted": float(accepted.float().mean()),
            "per_position_acceptance": per_position}


def _model_card(drafter: MuseGlimmerAssistantModel, metrics: dict) -> str:
    r = metrics["recipe"]
    return "\n".join([
        "---", "library_name: transformers", "license: apache-2.0", "tags: [diffuspec, speculative-decoding, dflash]",
        "---", "# DFlash drafter (diffuspec train-dflash)", "",
        (f"- target: `{metrics['target']}`; run it with `target.generate(..., assistant_model=AutoModel.from_pretrained"
        "(this), speculation_type=\"dflash\")` or `diffuspec bench --dflash <this folder>`"),
        (f"- architecture: `{type(drafter).__name__}` ({drafter.config.model_type}), {r['layers']} layers, width "
        f"{drafter.config.hidden_size} (the target's), {metrics['own_parameters'] / 1e6:.2f} M own parameters "
        f"(the target's embeddings and LM head, {metrics['shared_target_parameters'] / 1e6:.2f} M, are shared and "
        "not counted), float32 safetensors"),
        (f"- reads target layers {metrics['target_layer_ids']}; block {r['block_size']} (anchor + "
        f"{r['block_size'] - 1} drafted tokens per pass); mask token id {drafter.config.mask_token_id}"),
        (f"- trained on {metrics['distillation_rows']} rows of the target's greedy continuations, {r['steps']} steps x "
        f"{r['batch_rows']} rows x {r['blocks_per_row']} blocks ({metrics['predicted_tokens_trained']} predicted "
        f"tokens), DFlash loss decay gamma {r['gamma']}, lr {r['lr']}; final loss {metrics['final_loss']:.3f}; "
        f"{metrics['wall_seconds'] / 60:.1f} min"),
        "",
    ])

