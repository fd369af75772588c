"""``diffuspec train-dflash``: a DFlash drafter (transformers' ``muse_glimmer_assistant`` architecture, so
``target.generate(..., assistant_model=drafter, speculation_type="dflash")`` loads and runs it unchanged) for
any causal target, trained on the target's own greedy continuations.

The objective is DFlash's: from random anchor positions of each row's continuation, a block
``[anchor token, mask x (block_size - 1)]`` attends to the target's hidden states (at ``target_layer_ids``) of
every position before the anchor and, bidirectionally, to itself; cross-entropy on the target's next
``block_size - 1`` tokens, position i weighted exp(-(i - 1) / gamma) (early positions decide acceptance). Many
blocks per row are trained in one pass with a block-sparse attention mask. The target is frozen: its
embeddings and LM head are shared with the drafter and belong to the target.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    MuseGlimmerAssistantConfig,
    MuseGlimmerAssistantModel,
    PreTrainedModel,
)

from .distillation import DistillationSet, greedy_continuations
from .fit import fit, plot_losses


@dataclass(frozen=True)
class DFlashRecipe:
    """Size and training budget. The default size matches the embedded diffusion drafter (1.05 M parameters, its
    embeddings included) within 20% counting the DFlash drafter's own parameters: the target's embeddings and LM
    head, which it borrows, are not counted."""

    layers: int = 2
    heads: int = 4
    ffn: int = 256
    context_layers: int = 3  # target layers read, spread over the target's depth
    block_size: int = 16  # 15 draft tokens per pass: the longest block the diffusion drafter is aligned on
    gamma: float = 7.0  # DFlash's loss decay for a 16-token block
    seed: int = 0
    corpus_bytes: int = 2_000_000  # of standard-library source the raw prompts are cut from
    prompts: int = 1024  # raw corpus prompts (code lines and docstring prose, as ``train-demo`` makes them)
    chat_prompts: int = 256  # chat prompts, when the target's tokenizer has a chat template
    prompt_max: int = 64
    continuation: int = 48
    context: int = 128  # prompt tokens kept per distillation row
    steps: int = 500
    batch_size: int = 16
    blocks_per_row: int = 8
    lr: float = 2e-3


def spread_layers(n_layers: int, count: int) -> list[int]:
    """``count`` target layers from the second to the third-to-last (DFlash's choice: early and late features,
    not the final layer, which is shaped for the LM head)."""
    lo = min(1, n_layers - 1)
    hi = max(lo, n_layers - 3)
    return sorted({round(lo + (hi - lo) * i / max(1, count - 1)) for i in range(count)})


def build_dflash_drafter(target: PreTrainedModel, recipe: DFlashRecipe, mask_token_id: int) -> MuseGlimmerAssistantModel:
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
        target_layer_ids=spread_layers(text.num_hidden_layers, recipe.context_layers),
        bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id,
    )
    return MuseGlimmerAssistantModel(config).to(target.device)


def own_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def target_features(target: PreTrainedModel, tokens: torch.Tensor, valid: torch.Tensor, layer_ids: list[int]) -> torch.Tensor:
    """[b, T, len(layer_ids) * hidden]: the frozen target's hidden states at ``layer_ids`` (transformers'
    ``hidden_states[i + 1]``, as the DFlash candidate generator reads them)."""
    with torch.no_grad():
        out = target(input_ids=tokens, attention_mask=valid.long(), output_hidden_states=[i + 1 for i in layer_ids])
        return torch.cat([out.hidden_states[i + 1] for i in layer_ids], dim=-1)


def dflash_loss(drafter: MuseGlimmerAssistantModel, target: PreTrainedModel, tokens: torch.Tensor,
                valid: torch.Tensor, anchors: torch.Tensor, gamma: float) -> torch.Tensor:
    """DFlash's weighted block cross-entropy. ``tokens``/``valid`` [b, T] rows; ``anchors`` [b, N] anchor
    positions, each before the row's last valid token (labels past a row's end weigh nothing)."""
    cfg = drafter.config
    b, width = tokens.shape
    size, n = cfg.block_size, anchors.shape[1]
    device = tokens.device
    context = target_features(target, tokens, valid, cfg.target_layer_ids)
    offsets = torch.arange(size, device=device)
    block_pos = anchors[:, :, None] + offsets  # [b, N, B]
    noise = torch.full((b, n, size), cfg.mask_token_id, dtype=torch.long, device=device)
    noise[:, :, 0] = tokens.gather(1, anchors)
    with torch.no_grad():
        embeds = target.get_input_embeddings()(noise.view(b, n * size))
    # queries of block j see context positions before its anchor and every key of block j
    sees_context = torch.arange(width, device=device) < anchors[:, :, None]  # [b, N, T]
    sees_context &= valid[:, None, :]
    same_block = torch.eye(n, dtype=torch.bool, device=device)[:, :, None].expand(n, n, size)  # [N, N, B]
    mask = torch.cat([sees_context[:, :, None, :].expand(b, n, size, width),
                      same_block[None, :, None].expand(b, n, size, n, size).reshape(b, n, size, n * size)], dim=-1)
    mask = mask.view(b, 1, n * size, width + n * size)
    positions = torch.cat([torch.arange(width, device=device).expand(b, width), block_pos.view(b, n * size)], dim=1)
    hidden = drafter(noise_embeds=embeds, context_hidden_states=context, position_ids=positions,
                     attention_mask={"full_attention": mask}).last_hidden_state
    logits = target.get_output_embeddings()(hidden.view(b, n, size, -1)[:, :, 1:])  # [b, N, B - 1, V]
    label_pos = block_pos[:, :, 1:]
    lengths = valid.sum(dim=1)
    labels = tokens.gather(1, label_pos.clamp(max=width - 1).view(b, -1)).view_as(label_pos)
    weight = torch.exp(-(offsets[1:] - 1) / gamma).expand_as(label_pos) * (label_pos < lengths[:, None, None])
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 2).float(), labels.flatten(), reduction="none")
    return (ce * weight.flatten()).sum() / weight.sum()


def sample_anchors(data: DistillationSet, rows: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """[len(rows), n] anchors: from the last prompt token (the loop's first draft) to the last but one token."""
    lo = (data.prompt_lens[rows] - 1).clamp(min=0)
    span = (data.lengths[rows] - 1 - lo).clamp(min=1)
    return lo[:, None] + (torch.rand(rows.numel(), n, generator=generator) * span[:, None]).long()


def distillation_prompts(tokenizer, recipe: DFlashRecipe) -> list[list[int]]:
    """The prompts ``train-demo`` distils on: varied-length standard-library code and prose (``raw_prompts``)
    and, when the tokenizer has a chat template, synthesised chat prompts."""
    from .chat_data import render, stdlib_facts, synthesize
    from .data import stdlib_corpus, token_stream
    from .demo import raw_prompts

    train_texts, _, _ = stdlib_corpus(recipe.corpus_bytes, 10)
    stream = token_stream(tokenizer, train_texts)
    newline_ids = [i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])]
    facts = stdlib_facts()
    prose = [tokenizer(f.sentence)["input_ids"] for f in facts]
    prompts = raw_prompts(stream, newline_ids, prose, recipe.prompts, recipe.prompt_max, random.Random(recipe.seed))
    if recipe.chat_prompts and tokenizer.chat_template:
        prompts += [list(render(tokenizer, c, prompt_only=True, tokenize=True, return_dict=False))
                    for c in synthesize(facts, recipe.chat_prompts, recipe.seed + 11, "train")]
    return prompts


def train_dflash(target_dir: str | Path, out_dir: str | Path, recipe: DFlashRecipe = DFlashRecipe(),
                 device: str = "cpu") -> dict:
    """Train a DFlash drafter for the target at ``target_dir``; save it (with the target's tokenizer, a model
    card and metrics.json) to ``out_dir``."""
    out_dir = Path(out_dir)
    started = time.time()
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    target = AutoModelForCausalLM.from_pretrained(target_dir).to(device).eval().requires_grad_(False)
    mask = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.pad_token_id
    if mask is None:
        raise ValueError("the target's tokenizer has neither a mask nor a pad token: DFlash needs an id of the "
                         "target's vocabulary for its masked positions; add a mask token to the tokenizer")

    print(f"[1/3] distillation set: the target's greedy continuations of {recipe.prompts} + chat prompts")
    prompts = distillation_prompts(tokenizer, recipe)
    continuations = greedy_continuations(target, prompts, recipe.continuation, batch=256)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    data = DistillationSet.build(prompts, continuations, pad, recipe.context)
    width = int(data.lengths.max())

    drafter = build_dflash_drafter(target, recipe, mask)
    print(f"[2/3] DFlash drafter: {own_parameters(drafter) / 1e6:.2f} M own parameters, target layers "
          f"{drafter.config.target_layer_ids}, block {recipe.block_size}; {recipe.steps} steps")

    def step_loss(step: int) -> torch.Tensor:
        rows = torch.randint(0, len(data), (recipe.batch_size,), generator=generator)
        tokens = data.tokens[rows, :width].to(device)
        valid = (torch.arange(width) < data.lengths[rows, None]).to(device)
        anchors = sample_anchors(data, rows, recipe.blocks_per_row, generator).to(device)
        return dflash_loss(drafter, target, tokens, valid, anchors, recipe.gamma)

    losses = fit(drafter, step_loss, recipe.steps, recipe.lr, "DFlash drafter")

    print("[3/3] saving")
    out_dir.mkdir(parents=True, exist_ok=True)
    drafter.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tail = losses[-max(1, len(losses) // 10):]
    trained_tokens = recipe.steps * recipe.batch_size * recipe.blocks_per_row * (recipe.block_size - 1)
    metrics = {
        "target": str(target_dir), "recipe": asdict(recipe), "own_parameters": own_parameters(drafter),
        "shared_target_parameters": own_parameters(target.get_input_embeddings()),
        "parameters_counted": "the drafter's own (context projection, layers, norms); the target's embeddings "
                              "and LM head, which it borrows, are the target's",
        "target_layer_ids": drafter.config.target_layer_ids, "distillation_rows": len(data),
        "predicted_tokens_trained": trained_tokens, "final_loss": sum(tail) / len(tail),
        "loss_curve": losses[:: max(1, len(losses) // 200)], "wall_seconds": time.time() - started,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "README.md").write_text(_model_card(drafter, metrics))
    plot_losses({"DFlash drafter: weighted block CE": losses}, out_dir / "training_curve.png")
    return metrics


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
        f"{r['batch_size']} rows x {r['blocks_per_row']} blocks ({metrics['predicted_tokens_trained']} predicted "
        f"tokens), DFlash loss decay gamma {r['gamma']}, lr {r['lr']}; final loss {metrics['final_loss']:.3f}; "
        f"{metrics['wall_seconds'] / 60:.1f} min"),
        "",
    ])

