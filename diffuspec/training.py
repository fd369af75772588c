"""Training: the embedded demo pair, and drafter alignment (SpecDiff-2 streak distillation) for any pair.

``train_demo`` rebuilds everything from the running interpreter's own standard library: corpus, byte-level BPE
tokenizer, AR target, masked-diffusion drafter (then aligned to the target), a same-size AR drafter distilled
from the target (the fair classic-speculative baseline), evaluation and model cards. Seeded and deterministic
on a given machine and thread count.
"""

from __future__ import annotations

import json
import math
import sysconfig
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from .loading import CPS_NGRAM_FILE
from .path_search import CorpusNGram

EOS_TOKEN, MASK_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|mask|>", "<|pad|>"
SKIPPED_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages"}


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int
    ffn: int


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that decides the demo pair. ``PRESETS["demo"]`` is what ships."""

    seed: int = 0
    corpus_bytes: int = 8_000_000  # of standard-library source, whole files in sorted order
    heldout_every: int = 10  # a file is held out when crc32(its relative path) % heldout_every == 0
    vocab_size: int = 2048
    context: int = 512  # the models' context window
    seq_len: int = 128
    batch_size: int = 16
    target: ModelSize = ModelSize(hidden=256, layers=6, heads=4, ffn=768)
    drafter: ModelSize = ModelSize(hidden=128, layers=3, heads=4, ffn=512)
    target_steps: int = 1500
    # Both drafters learn from the target's own text: corpus prompts plus the target's greedy continuations
    # (a drafter is judged only on how well it predicts the target, so this is the data that matters).
    distil_prompts: int = 16384
    distil_prompt_len: int = 32
    distil_continuation: int = 96
    drafter_steps: int = 1500  # causal pre-training of both drafters on the distillation set (the same budget)
    lr: float = 3e-3
    adapt_steps: int = 1000  # masked-diffusion adaptation of the diffusion drafter (Dream recipe)
    adapt_lr: float = 1e-3
    align_block: int = 16  # the longest block aligned to (ADL settles near k_max / 2 = 16)
    align_steps: int = 3000  # streak distillation of the diffusion drafter; the AR drafter gets the same budget
    align_batch: int = 32
    align_lr: float = 2e-3
    cps_ngram_order: int = 5  # CPS's corpus n-gram table, counted on the target's continuations
    eval_prompts: int = 64
    eval_new_tokens: int = 96


PRESETS = {
    "demo": DemoRecipe(),
    # Every stage end to end in about a minute: the smoke test's recipe.
    "tiny": DemoRecipe(
        corpus_bytes=300_000, heldout_every=3, vocab_size=384, context=256, seq_len=64, batch_size=8,
        target=ModelSize(64, 2, 2, 128), drafter=ModelSize(32, 1, 2, 64), target_steps=60,
        distil_prompts=64, distil_prompt_len=16, distil_continuation=32, drafter_steps=60, lr=5e-3, adapt_steps=40,
        align_block=8, align_steps=40, align_batch=8, eval_prompts=4, eval_new_tokens=32,
    ),
}


# ----- corpus and tokenizer -----------------------------------------------------------------------------


def stdlib_corpus(max_bytes: int, heldout_every: int) -> tuple[list[str], list[str], list[str]]:
    """(train texts, held-out texts, relative paths used): the interpreter's own ``*.py`` sources, sorted by
    path, tests excluded, whole files until ``max_bytes``; held-out by a hash of the path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not SKIPPED_DIRS & set(p.relative_to(root).parts))
    train, heldout, used, total = [], [], [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        if total + len(text) > max_bytes:
            break
        total += len(text)
        rel = path.relative_to(root).as_posix()
        used.append(rel)
        (heldout if zlib.crc32(rel.encode()) % heldout_every == 0 else train).append(text)
    return train, heldout, used


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with EOS, mask and pad tokens; ``save_pretrained`` makes it ``AutoTokenizer``-loadable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, MASK_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS_TOKEN, mask_token=MASK_TOKEN, pad_token=PAD_TOKEN,
        model_max_length=None,
    )


def token_stream(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> torch.Tensor:
    """All texts as one token sequence, each file ended by EOS."""
    ids: list[int] = []
    for encoded in tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []:
        ids += encoded + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def random_windows(stream: torch.Tensor, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, stream.numel() - length, (n,), generator=generator)
    return torch.stack([stream[s : s + length] for s in starts.tolist()])


# ----- models -------------------------------------------------------------------------------------------


def _special_ids(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, tie_word_embeddings=True,
    )


def build_ar_model(size: ModelSize, tokenizer, context: int) -> LlamaForCausalLM:
    """A Llama-architecture causal LM (the target, and the AR drafter baseline)."""
    config = LlamaConfig(
        hidden_size=size.hidden, intermediate_size=size.ffn, num_hidden_layers=size.layers,
        num_attention_heads=size.heads, num_key_value_heads=size.heads, max_position_embeddings=context,
        **_special_ids(tokenizer),
    )
    return LlamaForCausalLM(config)


def build_diffusion_model(size: ModelSize, tokenizer, context: int, shifted: bool = False) -> Gemma3ForCausalLM:
    """A native bidirectional transformer (Gemma3 with ``use_bidirectional_attention``). ``shifted`` is recorded
    in the config (``diffuspec_shifted_logits``) so the engine reads its logits the right way."""
    config = Gemma3TextConfig(
        hidden_size=size.hidden, intermediate_size=size.ffn, num_hidden_layers=size.layers,
        num_attention_heads=size.heads, num_key_value_heads=size.heads, head_dim=size.hidden // size.heads,
        max_position_embeddings=context, use_bidirectional_attention=True,
        # Without a causal mask, order comes from RoPE alone: Gemma3's global-layer theta (1e6) barely rotates
        # over a few hundred positions, and a small model then reads its context as a bag of words.
        rope_parameters={kind: {"rope_type": "default", "rope_theta": 10_000.0} for kind in ("full_attention", "sliding_attention")},
        query_pre_attn_scalar=size.hidden // size.heads,
        layer_types=["full_attention"] * size.layers, mask_token_id=tokenizer.mask_token_id,
        diffuspec_shifted_logits=shifted,
        **_special_ids(tokenizer),
    )
    return Gemma3ForCausalLM(config)


def set_bidirectional(model: Gemma3ForCausalLM, bidirectional: bool) -> None:
    """Switch a Gemma3 model between causal and bidirectional attention (Dream's AR-to-diffusion adaptation
    starts from a causal model)."""
    model.config.use_bidirectional_attention = bidirectional
    for layer in model.model.layers:
        layer.self_attn.is_causal = not bidirectional


# ----- objectives ---------------------------------------------------------------------------------------


def causal_lm_loss(model: PreTrainedModel, tokens: torch.Tensor) -> torch.Tensor:
    return model(input_ids=tokens, labels=tokens).loss


def _block_logits(logits: torch.Tensor, start: int, end: int, shifted: bool) -> torch.Tensor:
    """The logits that predict positions [start, end): the same positions, or one earlier when shifted."""
    return logits[:, start - 1 : end - 1] if shifted else logits[:, start:end]


def masked_diffusion_loss(
    model: PreTrainedModel, tokens: torch.Tensor, mask_id: int, generator: torch.Generator, shifted: bool = False
) -> torch.Tensor:
    """MDLM/LLaDA objective: t ~ U(0.05, 1) per sequence, mask each token with probability t, cross-entropy on
    the masked tokens weighted 1/t. Half the rows mask only a suffix block (the prefix stays clean), the
    shape of a drafting call. ``shifted``: Dream style, position i's logits predict token i + 1."""
    b, n = tokens.shape
    t = 0.05 + 0.95 * torch.rand(b, 1, generator=generator)  # t >= 0.05 bounds the 1/t weight's variance
    masked = torch.rand(b, n, generator=generator) < t
    block = torch.randint(1, n // 2, (b, 1), generator=generator)
    suffix_only = torch.rand(b, 1, generator=generator) < 0.5
    masked &= ~suffix_only | (torch.arange(n) >= n - block)
    masked[:, 0] = False  # the first token is always context (a shifted model cannot predict it)
    masked[:, -1] |= ~masked.any(dim=1)  # at least one masked token per row
    masked = masked.to(tokens.device)
    logits = _block_logits(model(input_ids=tokens.masked_fill(masked, mask_id)).logits, 1, n, shifted)
    ce = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    return (ce * masked[:, 1:] / t.to(ce.device)).sum() / (b * n)


def streak_loss(
    model: PreTrainedModel, prefix: torch.Tensor, continuation: torch.Tensor, mask_id: int, shifted: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """SpecDiff-2 streak distillation. The drafter sees ``prefix`` + g masks and should put probability on
    the verifier's own continuation x_1..x_g. Returns (loss, expected accepted streak
    E = sum_m prod_{j<=m} q_j). The loss is the paper's stable variant: -sum_j stopgrad(prod_{i<j} q_i) log q_j,
    plus a small plain term (0.1 log q_j) so late positions keep learning while early ones still fail."""
    g = continuation.shape[1]
    masks = torch.full_like(continuation, mask_id)
    p = prefix.shape[1]
    logits = _block_logits(model(input_ids=torch.cat([prefix, masks], dim=1)).logits, p, p + g, shifted)
    log_q = logits.float().log_softmax(-1).gather(-1, continuation[..., None]).squeeze(-1)
    streak = log_q.cumsum(dim=1).exp()  # prod_{j<=m} q_j
    reach = torch.cat([torch.ones_like(streak[:, :1]), streak[:, :-1]], dim=1).detach()  # prod_{i<j} q_i
    loss = -((reach + 0.1) * log_q).sum(dim=1).mean() / g
    return loss, streak.sum(dim=1).mean().detach()


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


@torch.no_grad()
def greedy_continuations(target: PreTrainedModel, prompts: torch.Tensor, length: int, batch: int = 256) -> torch.Tensor:
    """The verifier's own greedy continuations of equal-length prompts ([n, P] -> [n, length])."""
    out = []
    for rows in tqdm(prompts.split(batch), desc="target continuations", leave=False):
        generated = target.generate(
            rows, attention_mask=torch.ones_like(rows), do_sample=False, max_new_tokens=length,
            min_new_tokens=length, pad_token_id=target.config.pad_token_id,
        )
        out.append(generated[:, rows.shape[1] :])
    return torch.cat(out)


def align_drafter(
    drafter: PreTrainedModel,
    prompts: torch.Tensor,
    continuations: torch.Tensor,
    mask_id: int,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    block: int,
    min_block: int,
    generator: torch.Generator,
    shifted: bool = False,
) -> tuple[list[float], list[float]]:
    """Streak-distil ``drafter`` towards the verifier that wrote ``continuations``; returns (losses, streaks).
    Each batch drafts a random block length in [min_block, block] from a random point of the continuation
    (prompt plus the verifier's first c tokens as context), as the decoding loop will ask for."""
    streaks: list[float] = []
    g = continuations.shape[1]
    block = min(block, g)

    def step_loss(step: int) -> torch.Tensor:
        rows = torch.randint(0, prompts.shape[0], (batch_size,), generator=generator)
        size = int(torch.randint(min(min_block, block), block + 1, (1,), generator=generator))
        cut = int(torch.randint(0, g - size + 1, (1,), generator=generator))
        device = drafter.device
        context = torch.cat([prompts[rows], continuations[rows, :cut]], dim=1)
        loss, streak = streak_loss(
            drafter, context.to(device), continuations[rows, cut : cut + size].to(device), mask_id, shifted
        )
        streaks.append(streak.item())
        return loss

    losses = fit(drafter, step_loss, steps, lr, "align drafter (streak distillation)")
    return losses, streaks


# ----- evaluation ---------------------------------------------------------------------------------------


def evaluate_pair(engine, prompts: Sequence[str], new_tokens: int) -> dict[str, dict[str, float]]:
    """Greedy MAT and tokens per step of each available drafting variant on ``prompts``; every output is
    checked against the target's own greedy output. (``diffuspec-online-ngram`` equals ``diffuspec`` when
    the engine has no corpus n-gram table.)"""
    variants = {
        "diffuspec": (engine, "diffuspec"),
        # the proxy without the corpus table, lambda as the engine uses it then
        "diffuspec-online-ngram": (engine.with_config(cps_corpus_weight=0.0, cps_lambda=0.9), "diffuspec"),
        "diffuspec-no-cps": (engine.with_config(cps=False), "diffuspec"),
        "ar-drafter": (engine, "ar-drafter"),
    }
    references = [engine.generate(p, new_tokens, mode="ar").token_ids for p in prompts]
    results = {}
    for name, (variant, mode) in variants.items():
        if mode not in variant.modes:
            continue
        steps = accepted = tokens = 0
        for prompt, reference in zip(prompts, references):
            out = variant.generate(prompt, new_tokens, mode=mode)
            if out.token_ids != reference:
                raise RuntimeError(f"{name} differs from the target's greedy output on {prompt[:40]!r}")
            steps += out.stats.steps
            accepted += out.stats.accepted_tokens
            tokens += out.stats.new_tokens
        results[name] = {"mat": accepted / steps, "tokens_per_step": tokens / steps}
    return results


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


# ----- the demo pair, end to end ------------------------------------------------------------------------


def _model_card(role: str, title: str, model: PreTrainedModel, facts: dict) -> str:
    params = sum(p.numel() for p in model.parameters())
    lines = [
        "---", "library_name: transformers", "license: apache-2.0", "tags: [diffuspec, speculative-decoding]", "---",
        f"# diffuspec embedded demo: {title}", "",
        f"- role: {role}", f"- architecture: `{type(model).__name__}` ({model.config.model_type}), "
        f"{params / 1e6:.2f} M parameters, float32 safetensors",
    ]
    lines += [f"- {key}: {value}" for key, value in facts.items()]
    return "\n".join(lines) + "\n"


TARGET_FIELDS = ("seed", "corpus_bytes", "heldout_every", "vocab_size", "context", "seq_len", "batch_size", "target",
                 "target_steps", "lr")


def _reusable_target(out_dir: Path, recipe: DemoRecipe):
    """The target and tokenizer already in ``out_dir`` if they were trained with this recipe's target fields
    (every stage has its own seeded generator, so a reused target leaves the later stages unchanged)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    metrics = out_dir / "metrics.json"
    if not metrics.exists() or not (out_dir / "target" / "config.json").exists():
        return None
    saved = json.loads(metrics.read_text())["recipe"]
    wanted = json.loads(json.dumps(asdict(recipe)))
    if any(saved.get(field) != wanted[field] for field in TARGET_FIELDS):
        return None
    curves = json.loads(metrics.read_text()).get("curves", {})
    return (AutoModelForCausalLM.from_pretrained(out_dir / "target"), AutoTokenizer.from_pretrained(out_dir / "target"),
            curves.get("target: causal LM loss"))


def train_demo(
    out_dir: Path, recipe: DemoRecipe = PRESETS["demo"], device: str = "cpu", reuse_target: bool = False
) -> dict:
    """Rebuild the embedded demo pair into ``out_dir`` (target/, drafter/, ar_drafter/, metrics, plots).
    ``reuse_target`` keeps a target (and tokenizer) already there when its recipe fields match."""
    from .config import DiffuSpecConfig
    from .engine import DiffuSpec

    out_dir = Path(out_dir)

    def stage(k: int) -> torch.Generator:  # each stage its own seed: stages stay reproducible on their own
        torch.manual_seed(recipe.seed + k)
        return torch.Generator().manual_seed(recipe.seed + k)

    print("[1/7] corpus and tokenizer")
    train_texts, heldout_texts, files = stdlib_corpus(recipe.corpus_bytes, recipe.heldout_every)
    reused = _reusable_target(out_dir, recipe) if reuse_target else None
    tokenizer = reused[1] if reused else train_tokenizer(train_texts, recipe.vocab_size)
    mask_id = tokenizer.mask_token_id
    train_stream, heldout_stream = token_stream(tokenizer, train_texts), token_stream(tokenizer, heldout_texts)

    def batches(gen: torch.Generator) -> Callable[[], torch.Tensor]:
        return lambda: random_windows(train_stream, recipe.batch_size, recipe.seq_len, gen).to(device)

    curves: dict[str, list[float]] = {}
    print("[2/7] target (causal LM)" + (": reused" if reused else ""))
    gen = stage(0)
    if reused:
        target = reused[0].to(device)
        if reused[2]:
            curves["target: causal LM loss"] = reused[2]
    else:
        target = build_ar_model(recipe.target, tokenizer, recipe.context).to(device)
        batch = batches(gen)
        curves["target: causal LM loss"] = fit(
            target, lambda s: causal_lm_loss(target, batch()), recipe.target_steps, recipe.lr, "target"
        )
    print("[3/7] distillation set: the target's greedy continuations of corpus prompts; CPS's n-gram table")
    gen = stage(3)
    prompts = random_windows(train_stream, recipe.distil_prompts, recipe.distil_prompt_len, gen).to(device)
    # Wide batches: decoding is launch-bound on a GPU; on CPU 256 rows was the fastest per sequence measured.
    rows = 256 if torch.device(device).type == "cpu" else 2048
    continuations = greedy_continuations(target, prompts, recipe.distil_continuation, batch=rows)
    sequences = torch.cat([prompts, continuations], dim=1)
    cps_ngram = CorpusNGram.count(
        sequences, len(tokenizer), recipe.cps_ngram_order, start=recipe.distil_prompt_len
    )
    eval_prompts = [
        tokenizer.decode(w)
        for w in random_windows(heldout_stream, recipe.eval_prompts, recipe.seq_len // 2, gen).tolist()
    ]

    def distilled(gen: torch.Generator, batch_size: int) -> Callable[[], torch.Tensor]:
        return lambda: sequences[torch.randint(0, sequences.shape[0], (batch_size,), generator=gen).to(device)]

    print("[4/7] diffusion drafter: causal pre-training, then Dream-style masked-diffusion adaptation")
    gen = stage(1)
    batch = distilled(gen, recipe.batch_size)
    drafter = build_diffusion_model(recipe.drafter, tokenizer, recipe.context, shifted=True).to(device)
    set_bidirectional(drafter, False)
    curves["drafter: causal pre-training loss"] = fit(
        drafter, lambda s: causal_lm_loss(drafter, batch()), recipe.drafter_steps, recipe.lr, "drafter (causal)"
    )
    set_bidirectional(drafter, True)
    curves["drafter: masked-diffusion loss (shifted)"] = fit(
        drafter, lambda s: masked_diffusion_loss(drafter, batch(), mask_id, gen, shifted=True),
        recipe.adapt_steps, recipe.adapt_lr, "drafter (diffusion)",
    )
    print("[5/7] AR drafter (causal LM, same data and budget); acceptance before alignment")
    gen = stage(2)
    batch = distilled(gen, recipe.batch_size)
    ar_drafter = build_ar_model(recipe.drafter, tokenizer, recipe.context).to(device)
    curves["AR drafter: causal LM loss"] = fit(
        ar_drafter, lambda s: causal_lm_loss(ar_drafter, batch()), recipe.drafter_steps + recipe.adapt_steps,
        recipe.lr, "AR drafter",
    )
    config = DiffuSpecConfig()
    engine = DiffuSpec(target, drafter, tokenizer, config, ar_drafter=ar_drafter, cps_ngram=cps_ngram)
    before = evaluate_pair(engine, eval_prompts, recipe.eval_new_tokens)

    print("[6/7] align the drafter (streak distillation); distil the AR drafter on the same continuations")
    gen = stage(4)
    curves["drafter alignment: streak loss"], streaks = align_drafter(
        drafter, prompts, continuations, mask_id, steps=recipe.align_steps, lr=recipe.align_lr,
        batch_size=recipe.align_batch, block=recipe.align_block, min_block=min(4, recipe.align_block),
        generator=gen, shifted=True,
    )
    curves["drafter alignment: expected streak"] = streaks
    labels = sequences.clone()
    labels[:, : recipe.distil_prompt_len] = -100  # learn the continuation only
    gen = stage(5)

    def distil_loss(step: int) -> torch.Tensor:
        rows = torch.randint(0, sequences.shape[0], (recipe.align_batch,), generator=gen).to(device)
        return ar_drafter(input_ids=sequences[rows], labels=labels[rows]).loss

    curves["AR drafter distillation: loss"] = fit(
        ar_drafter, distil_loss, recipe.align_steps, recipe.align_lr, "AR drafter distil"
    )

    print("[7/7] evaluation, model cards, plots")
    engine = DiffuSpec(target, drafter, tokenizer, config, ar_drafter=ar_drafter, cps_ngram=cps_ngram)
    after = evaluate_pair(engine, eval_prompts, recipe.eval_new_tokens)
    val_gen = torch.Generator().manual_seed(recipe.seed + 1)
    val = random_windows(heldout_stream, 64, recipe.seq_len, val_gen).to(device)
    with torch.no_grad():
        val_loss = {
            "target": causal_lm_loss(target, val).item(),
            "drafter": masked_diffusion_loss(drafter, val, mask_id, val_gen, shifted=True).item(),
            "ar_drafter": causal_lm_loss(ar_drafter, val).item(),
        }
    metrics = {
        "recipe": asdict(recipe),
        "corpus": {"files": len(files), "train_tokens": train_stream.numel(), "heldout_tokens": heldout_stream.numel()},
        "validation_loss": val_loss,
        "greedy_acceptance_before_alignment": before,
        "greedy_acceptance_after_alignment": after,
        "curves": curves,
        "eval": {"prompts": len(eval_prompts), "new_tokens": recipe.eval_new_tokens, "engine_config": asdict(config)},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    common = {
        "corpus": f"CPython {sysconfig.get_python_version()} standard-library sources ({len(files)} files, tests "
        f"excluded, {train_stream.numel()} training tokens; 1 file in {recipe.heldout_every} held out by path hash)",
        "tokenizer": f"byte-level BPE, {len(tokenizer)} tokens, EOS {EOS_TOKEN}, mask {MASK_TOKEN}",
        "training command": "`diffuspec train-demo` (seed %d; see diffuspec/training.py DemoRecipe)" % recipe.seed,
    }
    acceptance = (
        f"greedy MAT on {len(eval_prompts)} held-out prompts x {recipe.eval_new_tokens} tokens: "
        f"{before['diffuspec']['mat']:.2f} before alignment, {after['diffuspec']['mat']:.2f} after (CPS + ADL)"
    )
    parts = {
        "target": (target, "the AR target (verifier)", {"validation loss (causal LM, held out)": f"{val_loss['target']:.3f}"}),
        "drafter": (drafter, "the masked-diffusion drafter, aligned to the target", {
            "objective": "causal LM pre-training, then Dream-style masked-diffusion adaptation (bidirectional, "
            "t ~ U(0.05, 1), 1/t-weighted CE), then SpecDiff-2 streak distillation",
            "logits": "shifted (Dream style): position t's logits predict token t + 1 (config: diffuspec_shifted_logits)",
            "validation loss (masked diffusion, held out)": f"{val_loss['drafter']:.3f}",
            "acceptance": acceptance,
        }),
        "ar_drafter": (ar_drafter, "a same-size AR drafter distilled from the target (baseline)", {
            "validation loss (causal LM, held out)": f"{val_loss['ar_drafter']:.3f}",
            "acceptance": f"greedy MAT {after.get('ar-drafter', {}).get('mat', float('nan')):.2f} (mode ar-drafter)",
        }),
    }
    for role, (model, title, facts) in parts.items():
        path = out_dir / role
        model.to("cpu").save_pretrained(path)
        tokenizer.save_pretrained(path)
        (path / "README.md").write_text(_model_card(role, title, model, {**common, **facts}))
    cps_ngram.save(out_dir / "drafter" / CPS_NGRAM_FILE)
    (out_dir / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in eval_prompts))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_losses(curves, out_dir / "training_curves.png")
    return metrics


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line) or JSON lines with "prompt", "text" or "turns" (Spec-Bench)."""
    prompts = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            row = json.loads(line)
            prompts.append(row.get("prompt") or row.get("text") or row["turns"][0])
        else:
            prompts.append(line)
    return prompts


def align(
    target_path: str,
    drafter_path: str,
    prompts_path: str,
    out_dir: str,
    *,
    steps: int = 400,
    block: int = 16,
    continuation: int = 64,
    lr: float = 1e-3,
    batch_size: int = 16,
    prompt_tokens: int = 64,
    device: str | None = None,
    mask_token_id: int | None = None,
    logits_shift: bool | None = None,
    ngram_order: int | None = None,
    seed: int = 0,
) -> dict:
    """Streak-distil any diffusion drafter towards any AR verifier with the same tokenizer, from the verifier's
    own greedy continuations of ``prompts``; saves the aligned drafter to ``out_dir``, with CPS's corpus n-gram
    table counted on those continuations (``cps_ngram.safetensors``, loaded with the drafter; order: as given,
    else the longest up to 5 that the vocabulary allows)."""
    from .config import DiffuSpecError
    from .engine import _vocab_size, resolve_logits_shift, resolve_mask_token
    from .loading import load_models

    models = load_models(target_path, drafter_path, device=device)
    mask_id = resolve_mask_token(models.tokenizer, models.drafter, mask_token_id)
    shifted = resolve_logits_shift(models.drafter, logits_shift)
    gen = torch.Generator().manual_seed(seed)
    # Equal-length prompts batch without padding: keep each prompt's last ``prompt_tokens`` tokens.
    encoded = [ids[-prompt_tokens:] for ids in models.tokenizer(read_prompts(prompts_path))["input_ids"]]
    encoded = [ids for ids in encoded if len(ids) == prompt_tokens]
    if not encoded:
        raise DiffuSpecError(f"no prompt in {prompts_path} has {prompt_tokens} tokens: lower --prompt-tokens")
    prompts = torch.tensor(encoded, device=models.target.device)
    continuations = greedy_continuations(models.target, prompts, continuation)
    losses, streaks = align_drafter(
        models.drafter, prompts, continuations, mask_id, steps=steps, lr=lr, batch_size=batch_size,
        block=block, min_block=min(4, block), generator=gen, shifted=shifted,
    )
    out = Path(out_dir)
    models.drafter.save_pretrained(out)
    models.tokenizer.save_pretrained(out)
    vocab = _vocab_size(models.target)
    order = ngram_order or min(5, CorpusNGram.longest_order(vocab))
    CorpusNGram.count(torch.cat([prompts, continuations], dim=1), vocab, order, start=prompt_tokens).save(
        out / CPS_NGRAM_FILE
    )
    plot_losses({"streak loss": losses, "expected streak": streaks}, out / "alignment_curves.png")
    return {"prompts": len(encoded), "first_streak": streaks[0], "last_streak": streaks[-1]}
