"""``diffuspec train-drafter``: a block drafter (``adapters/block_drafter.py``) for any causal target, trained on the
target's own greedy continuations, with SpecDiff-2 streak alignment and CPS's corpus n-gram table.

The recipe: prompts (chat prompts through the target's chat template, standard-library code and prose); the
target's greedy continuations of them with its hidden states (``target_text``: the expensive part, chunked and
resumable); a draft vocabulary of the tokens the target writes most (``vocab``); the drafter made of copies of
the target's last layers; training on blocks cut at random points of the continuations, many blocks per row in
one pass (block-sparse attention over the row's context), checkpointed; an offline evaluation on held-out rows;
the drafter saved (its own weights only, bfloat16) with the n-gram table, a model card and metrics.json.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from ..adapters.block_drafter import BlockDrafterModel, block_drafter_from_target, draft_head
from ..path_search import CorpusNGram
from .blocks import Batch, accepted_lengths, decayed_ce, fit_resumable, make_batch, mask_token_of, streak_objective
from .target_text import TargetRows, TextRecipe, end_token_ids, target_text, token_counts
from .vocab import coverage, draft_vocabulary, index_of

LOSSES = ("streak", "ce")


@dataclass(frozen=True)
class DrafterRecipe:
    """What decides the drafter. The shipped drafter of ``gemma-3-270m`` is these defaults with ``steps=1200`` and
    ``keep_layers=(0, 2, 9)`` (docs/training.md)."""

    layers: int = 2  # drafter layers, copies of the target's last ones
    fused_layers: tuple[int, ...] = ()  # (): per-layer context; else these hidden_states through a projection
    carry_state: bool = False  # block inputs also carry the target's state before the anchor (EAGLE-style)
    copy: bool = True  # start from the target's weights (False: fresh layers of the same shape)
    block_size: int = 16
    shifted: bool = True
    draft_vocab: int = 32768
    loss: str = "streak"  # "streak" (SpecDiff-2) or "ce" (DFlash's position-decayed cross-entropy)
    gamma: float = 7.0  # the cross-entropy's decay over block positions
    seed: int = 0
    text: TextRecipe = TextRecipe()
    keep_layers: tuple[int, ...] = ()  # also keep these hidden_states of the target (a peer trained on the same rows)
    steps: int = 600
    batch_rows: int = 4
    blocks_per_row: int = 8
    lr: float = 3e-4
    ngram_order: int = 3
    checkpoint_every: int = 25

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.layers < 1 or self.block_size < 2 or self.draft_vocab < 2:
            raise ValueError("need layers >= 1, block_size >= 2 and draft_vocab >= 2")

    def target_layers(self, n_layers: int) -> list[int]:
        if self.layers > n_layers:
            raise ValueError(f"the target has {n_layers} layers, fewer than the drafter's {self.layers}")
        return list(range(n_layers - self.layers, n_layers))

    def context_layers(self, n_layers: int) -> list[int]:
        return list(self.fused_layers) if self.fused_layers else self.target_layers(n_layers)


def block_log_probs(model: BlockDrafterModel, embed: torch.nn.Module, head: torch.Tensor, batch: Batch,
                    softcap: float | None = None) -> torch.Tensor:
    """[b, N, P, draft vocab] the drafter's log-probabilities for every block of ``batch``."""
    b, width = batch.states.shape[:2]
    device = model.device
    positions = torch.arange(width, device=device).expand(b, width)
    cache = DynamicCache()
    for i, (keys, values) in enumerate(model.context_kv(batch.states.to(device), positions)):
        cache.update(keys, values, i)
    query_positions = batch.block_positions.to(device)
    key_positions = torch.cat([positions, query_positions], dim=1)
    masks = model.masks(batch.sees.to(device), query_positions, key_positions)
    n, p = batch.labels.shape[1:]
    size = model.config.block_size
    with torch.no_grad():
        embeds = embed(batch.block_tokens.to(device))
    anchors = batch.block_positions[:, ::size]  # [b, N]
    before = batch.states.gather(1, (anchors - 1).clamp(min=0)[..., None].expand(-1, -1, batch.states.shape[-1]))
    before = before.masked_fill((anchors == 0)[..., None], 0.0).repeat_interleave(size, dim=1)  # [b, N * B, ...]
    hidden = model.block_hidden(model.block_inputs(embeds, before.to(device)), query_positions, cache, masks)
    rows = model.predicting_rows(p)
    hidden = hidden.view(b, n, size, -1)[:, :, rows]
    logits = hidden @ head.T
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.float().log_softmax(dim=-1)


def block_loss(log_probs: torch.Tensor, batch: Batch, index: torch.Tensor, recipe: DrafterRecipe
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, expected streak, greedy accepted lengths [b, N]) of one batch."""
    device = log_probs.device
    draft_index = index[batch.labels].to(device)
    real = batch.real.to(device)
    learnable = real & (draft_index >= 0)
    log_q = log_probs.gather(-1, draft_index.clamp(min=0)[..., None]).squeeze(-1)
    loss, expected = streak_objective(log_q, learnable, real & (draft_index < 0))
    if recipe.loss == "ce":
        loss = decayed_ce(log_q, learnable, recipe.gamma)
    predicted = log_probs.argmax(dim=-1)
    accepted = accepted_lengths(predicted, draft_index.masked_fill(draft_index < 0, -2), real)
    return loss, expected, accepted


# ----- training ----------------------------------------------------------------------------------------------


def train_blocks(model: BlockDrafterModel, target: PreTrainedModel, rows: TargetRows, index: torch.Tensor,
                 recipe: DrafterRecipe, checkpoint: Path | None = None, log=print) -> dict[str, list[float]]:
    """``recipe.steps`` batches of blocks (``fit_resumable``: checkpointed in ``checkpoint``)."""
    embed = target.get_input_embeddings()
    softcap = getattr(target.config.get_text_config(), "final_logit_softcapping", None)
    generator = torch.Generator().manual_seed(recipe.seed)
    head = draft_head(target, model)

    def step(_: int) -> dict[str, torch.Tensor]:
        picked = torch.randint(0, len(rows), (recipe.batch_rows,), generator=generator).tolist()
        batch = make_batch(rows, picked, recipe.blocks_per_row, recipe.block_size, recipe.shifted,
                           model.config.mask_token_id, generator)
        loss, expected, accepted = block_loss(block_log_probs(model, embed, head, batch, softcap), batch, index, recipe)
        return {"loss": loss, "expected_streak": expected, "accepted": accepted.float().mean()}

    run = json.dumps([asdict(recipe), zlib.crc32(index.cpu().numpy().tobytes()), len(rows)], default=str)
    return fit_resumable(model, step, recipe.steps, recipe.lr, generator=generator, checkpoint=checkpoint,
                         checkpoint_every=recipe.checkpoint_every, run=run, log=log)


@torch.no_grad()
def evaluate_blocks(model: BlockDrafterModel, target: PreTrainedModel, rows: TargetRows, index: torch.Tensor,
                    recipe: DrafterRecipe, blocks: int = 16, seed: int = 1) -> dict:
    """Greedy acceptance on held-out rows: per block (a drafting call at a random point of a continuation), how
    many leading drafts equal the target's own continuation; the mean, the per-position acceptance and the mean
    expected streak under the drafter's probabilities."""
    embed = target.get_input_embeddings()
    softcap = getattr(target.config.get_text_config(), "final_logit_softcapping", None)
    head = draft_head(target, model)
    generator = torch.Generator().manual_seed(seed)
    accepted, expected, ranks = [], [], []
    for start in range(0, len(rows), recipe.batch_rows):
        picked = list(range(start, min(start + recipe.batch_rows, len(rows))))
        batch = make_batch(rows, picked, blocks, recipe.block_size, recipe.shifted, model.config.mask_token_id,
                           generator)
        log_probs = block_log_probs(model, embed, head, batch, softcap)
        _, e, a = block_loss(log_probs, batch, index, recipe)
        accepted.append(a.flatten())
        expected.append(float(e))
        first = index[batch.labels[..., 0]].to(log_probs.device)  # the target's first token, in the draft vocabulary
        score = log_probs[..., 0, :].gather(-1, first.clamp(min=0)[..., None])
        rank = (log_probs[..., 0, :] > score).sum(dim=-1).masked_fill(first < 0, log_probs.shape[-1])
        ranks.append(rank[batch.real[..., 0].to(rank.device)])
    accepted, ranks = torch.cat(accepted), torch.cat(ranks)
    per_position = [float((accepted > j).float().sum() / (accepted >= j).float().sum().clamp(min=1))
                    for j in range(recipe.block_size if recipe.shifted else recipe.block_size - 1)]
    return {"blocks": int(accepted.numel()), "mean_accepted": float(accepted.float().mean()),
            "per_position_acceptance": per_position, "expected_streak": sum(expected) / len(expected),
            # how often the target's next token is among the drafter's k likeliest first drafts (what a tree of k
            # branches at the first position would catch)
            "first_in_top": {k: float((ranks < k).float().mean()) for k in (1, 2, 4, 8)}}


# ----- the recipe end to end ---------------------------------------------------------------------------------


def corpus_counts(tokenizer: PreTrainedTokenizerBase, vocab_size: int, corpus_bytes: int) -> torch.Tensor:
    """Token counts over the text the prompts come from (standard-library source and chat conversations)."""
    from .chat_data import render, stdlib_facts, synthesize
    from .data import stdlib_corpus

    texts, _, _ = stdlib_corpus(corpus_bytes, 10)
    if tokenizer.chat_template:
        texts += [render(tokenizer, c, tokenize=False) for c in synthesize(stdlib_facts(), 2000, 99, "train")]
    return token_counts(tokenizer(texts, add_special_tokens=False)["input_ids"], vocab_size)


@dataclass
class DrafterData:
    train: TargetRows
    heldout: TargetRows
    draft_ids: torch.Tensor
    info: dict = field(default_factory=dict)


def prepare_data(target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, recipe: DrafterRecipe,
                 work: Path, log=print) -> DrafterData:
    """The target's rows (cached under ``work``, with the states of the drafter's context layers and
    ``recipe.keep_layers``) and the draft vocabulary."""
    n_layers = target.config.get_text_config().num_hidden_layers
    layers = recipe.context_layers(n_layers)
    kept = sorted(set(layers) | set(recipe.keep_layers))
    parts = {name: rows.select(layers) for name, rows in target_text(target, tokenizer, recipe.text, work, kept, log).items()}
    vocab = target.get_output_embeddings().weight.shape[0]
    outputs = parts["train"].continuations()
    ids = draft_vocabulary(token_counts(outputs, vocab), min(recipe.draft_vocab, vocab),
                           corpus_counts=corpus_counts(tokenizer, vocab, recipe.text.corpus_bytes),
                           always=end_token_ids(target, tokenizer) | {mask_token_of(tokenizer)})
    held = [t for c in parts["eval"].continuations() for t in c]
    info = {"train_rows": len(parts["train"]), "train_continuation_tokens": sum(map(len, outputs)),
            "heldout_rows": len(parts["eval"]), "heldout_continuation_tokens": len(held),
            "draft_vocab_coverage_heldout": coverage(ids, held, vocab),
            "draft_vocab_coverage_train": coverage(ids, [t for c in outputs for t in c], vocab)}
    return DrafterData(parts["train"], parts["eval"], ids, info)


def train_drafter(target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path,
                  recipe: DrafterRecipe = DrafterRecipe(), *, target_name: str = "", work: str | Path | None = None,
                  log=print) -> dict:
    """The recipe end to end for a loaded ``target`` (float32); the drafter, its CPS n-gram table, model card and
    metrics go to ``out_dir``; the target's continuations and the training checkpoint to ``work`` (default
    ``out_dir/work``; delete it once done: a rerun resumes from it)."""
    out = Path(out_dir)
    work = Path(work) if work is not None else out / "work"
    started = time.time()
    torch.manual_seed(recipe.seed)
    target.eval().requires_grad_(False)
    log("[1/4] the target's greedy continuations and hidden states")
    data = prepare_data(target, tokenizer, recipe, work, log)
    generated = time.time()
    vocab = target.get_output_embeddings().weight.shape[0]
    index = index_of(data.draft_ids, vocab)
    n_layers = target.config.get_text_config().num_hidden_layers
    model = block_drafter_from_target(
        target, recipe.target_layers(n_layers), draft_ids=data.draft_ids, mask_token_id=mask_token_of(tokenizer),
        block_size=recipe.block_size, shifted=recipe.shifted, fused=bool(recipe.fused_layers),
        context_layers=list(recipe.fused_layers) or None, copy=recipe.copy, carry_state=recipe.carry_state)
    own = sum(p.numel() for p in model.parameters())
    log(f"[2/4] block drafter: {own / 1e6:.2f} M own parameters (layers {model.config.copied_from or 'fresh'}, "
        f"context {model.config.context_layers}), draft vocabulary {data.draft_ids.numel()} "
        f"(held-out coverage {data.info['draft_vocab_coverage_heldout']:.3f}); {recipe.steps} steps")
    before = evaluate_blocks(model, target, data.heldout, index, recipe)
    curves = train_blocks(model, target, data.train, index, recipe, work / "checkpoint.pt", log)
    trained = time.time()
    log("[3/4] held-out evaluation")
    after = evaluate_blocks(model, target, data.heldout, index, recipe)
    log(f"      greedy accepted per block: {before['mean_accepted']:.2f} before training, "
        f"{after['mean_accepted']:.2f} after")
    log("[4/4] saving")
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out)
    model.to(target.dtype)
    cps_ngram_table(data.train, vocab, recipe.ngram_order).save(out / "cps_ngram.safetensors")
    metrics = {
        "target": target_name, "recipe": asdict(recipe), "own_parameters": own,
        "stored_bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file()),
        "copied_from": model.config.copied_from, "context_layers": model.config.context_layers,
        "data": data.info, "heldout_before_training": before, "heldout": after,
        "predicted_tokens_trained": recipe.steps * recipe.batch_rows * recipe.blocks_per_row * model.max_draft,
        "seconds": {"generation": generated - started, "training": trained - generated,
                    "total": time.time() - started},
        "curves": {k: v[:: max(1, len(v) // 200)] for k, v in curves.items()},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "README.md").write_text(model_card(model, metrics))
    return metrics


def cps_ngram_table(rows: TargetRows, vocab_size: int, order: int) -> CorpusNGram:
    """CPS's corpus n-gram table over the target's continuations, each with the ``order - 1`` tokens before it,
    back to back (the few n-grams that straddle two rows are noise the ``min_count`` cut mostly drops)."""
    history = order - 1
    stream = [t for row, p in zip(rows.tokens, rows.prompt_lens) for t in row[max(0, p - history):]]
    return CorpusNGram.count(torch.tensor([stream]), vocab_size, min(order, CorpusNGram.longest_order(vocab_size)))


def model_card(model: BlockDrafterModel, metrics: dict) -> str:
    r, d, h = metrics["recipe"], metrics["data"], metrics["heldout"]
    t = r["text"]
    return "\n".join([
        "---", "library_name: transformers", "license: gemma", "tags: [diffuspec, speculative-decoding, drafter]", "---",
        "# Block drafter (diffuspec train-drafter)", "",
        f"- target: `{metrics['target']}`; use it with `DiffuSpec.from_pretrained(<target>, <this folder>)`",
        (f"- design: {len(model.layers)} of the target's own decoder layers (copied from layers "
         f"{metrics['copied_from'] or 'none: fresh'}), reading the target's hidden states {metrics['context_layers']}"
         f"{' through a learnt projection' if r['fused_layers'] else ' (each layer the input of the layer it was copied from)'}; "
         f"block {r['block_size']} ({model.max_draft} drafts per pass, {'shifted' if r['shifted'] else 'unshifted'}); "
         f"draft vocabulary {model.config.draft_vocab_size} tokens scored with the target's own output embeddings "
         "(borrowed at load time, not stored)"),
        (f"- stored: {metrics['own_parameters'] / 1e6:.2f} M own parameters, bfloat16, "
         f"{metrics['stored_bytes'] / 1e6:.1f} MB with the CPS n-gram table (order {r['ngram_order']})"),
        (f"- data: the target's greedy continuations ({t['continuation']} tokens) of {d['train_rows']} prompts "
         f"({t['raw_prompts']} code and prose, {t['chat_prompts']} chat), {d['train_continuation_tokens']} tokens; "
         f"draft vocabulary coverage of held-out target output {d['draft_vocab_coverage_heldout']:.3f}"),
        (f"- training: {r['steps']} steps x {r['batch_rows']} rows x {r['blocks_per_row']} blocks, "
         f"{r['loss']} loss, lr {r['lr']}; {metrics['seconds']['generation'] / 60:.0f} min generating, "
         f"{metrics['seconds']['training'] / 60:.0f} min training"),
        (f"- held-out greedy acceptance ({h['blocks']} drafting calls on {d['heldout_rows']} held-out prompts): "
         f"{h['mean_accepted']:.2f} drafts accepted per call (before training "
         f"{metrics['heldout_before_training']['mean_accepted']:.2f}); per position "
         + ", ".join(f"{a:.2f}" for a in h["per_position_acceptance"][:8])),
        "",
    ])
