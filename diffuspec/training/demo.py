"""The embedded demo pair, end to end (``diffuspec train-demo``).

Everything comes from the running interpreter's own standard library: corpus, byte-level BPE tokenizer, AR
target pre-trained on the source, then fine-tuned on synthesised chat, RAG and tool-use conversations (with
raw code mixed in), a masked-diffusion drafter aligned to it and a same-size AR drafter distilled from it (the
fair classic-speculative baseline), both learning from the target's own continuations of varied-length code
and prose prompts and of chat prompts; evaluation and model cards. Seeded and deterministic on a given machine
and thread count.
"""

from __future__ import annotations

import json
import os
import random
import sysconfig
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..loading import CPS_NGRAM_FILE, EMBEDDED_DIR
from ..path_search import CorpusNGram
from . import chat_data
from .chat_data import CHAT_TEMPLATE, Conversation, render, stdlib_facts, synthesize
from .data import (EOS_TOKEN, MASK_TOKEN, ordinary_token_ids, random_windows, read_prompts, repeated_sequences,
                   stdlib_corpus, token_stream, train_tokenizer)
from .distillation import DistillationSet, greedy_continuations
from .evaluate import evaluate_chat, evaluate_pair, repeat_copy_accuracy
from .fit import align_drafter, fit, plot_losses
from .models import ModelSize, build_ar_model, build_diffusion_model, set_bidirectional
from .objectives import causal_lm_loss, masked_diffusion_loss


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that decides the demo pair. ``PRESETS["demo"]`` is the chat recipe as last run; the shipped
    pair still predates it (README, "The embedded demo pair")."""

    seed: int = 0
    corpus_bytes: int = 8_000_000  # of standard-library source, whole files in sorted order
    heldout_every: int = 10  # a file is held out when crc32(its relative path) % heldout_every == 0
    vocab_size: int = 2048
    context: int = 512  # the models' context window
    seq_len: int = 128
    batch_size: int = 16
    target: ModelSize = ModelSize(hidden=256, layers=6, heads=4, ffn=768)
    drafter: ModelSize = ModelSize(hidden=128, layers=3, heads=4, ffn=512)
    target_steps: int = 1500  # base pre-training on the corpus
    lr: float = 3e-3
    # Chat fine-tune of the target: synthesised conversations (loss on the assistant's tokens) with
    # ``chat_code_rows`` rows of raw corpus code in every batch, so code completion stays. Every step also
    # learns a batch of induction data (``repeated_sequences``: ``copy_rows`` rows of ``copy_len`` tokens,
    # repeated spans of up to ``copy_span``): the base target cannot copy from its context at all
    # (repeat-copy accuracy 0.00), and grounded answers and tool calls are copying.
    chat_conversations: int = 12000
    chat_steps: int = 2000
    chat_seq_len: int = 256
    chat_code_rows: int = 4
    chat_lr: float = 1e-3
    copy_rows: int = 32
    copy_len: int = 32
    copy_span: int = 12
    # Both drafters learn from the target's own text: its greedy continuations of raw corpus prompts of varied
    # length (one line to ``distil_prompt_max`` tokens, code and docstring prose) and of chat prompts.
    distil_prompts: int = 3072
    distil_prompt_max: int = 64
    distil_chat_prompts: int = 2048
    distil_continuation: int = 48
    distil_context: int = 128  # prompt tokens kept in a distillation row
    drafter_steps: int = 1000  # causal pre-training of both drafters on the distillation set (the same budget)
    adapt_steps: int = 700  # masked-diffusion adaptation of the diffusion drafter (Dream recipe)
    adapt_lr: float = 1e-3
    align_block: int = 16  # the longest block aligned to (ADL settles near k_max / 2 = 16)
    align_steps: int = 2000  # streak distillation of the diffusion drafter
    ar_distil_steps: int = 400  # the AR drafter's distillation on the continuations
    align_batch: int = 32
    align_lr: float = 2e-3
    cps_ngram_order: int = 5  # CPS's corpus n-gram table, counted on the target's continuations
    eval_prompts: int = 16
    eval_new_tokens: int = 64
    eval_chat: int = 32  # held-out conversations (held-out modules, tool schemas and phrasings)
    eval_chat_new_tokens: int = 48


PRESETS = {
    "demo": DemoRecipe(),
    # Every stage end to end in about a minute: the smoke test's recipe.
    "tiny": DemoRecipe(
        corpus_bytes=300_000, heldout_every=3, vocab_size=384, context=512, seq_len=64, batch_size=8,
        target=ModelSize(64, 2, 2, 128), drafter=ModelSize(32, 1, 2, 64), target_steps=60, lr=5e-3,
        chat_conversations=200, chat_steps=30, chat_seq_len=192, chat_code_rows=2, chat_lr=3e-3, copy_rows=8,
        copy_len=16, copy_span=6,
        distil_prompts=48, distil_prompt_max=16, distil_chat_prompts=16, distil_continuation=24, distil_context=64,
        drafter_steps=40, adapt_steps=30, align_block=8, align_steps=30, ar_distil_steps=20, align_batch=8,
        eval_prompts=4, eval_new_tokens=24, eval_chat=6, eval_chat_new_tokens=24,
    ),
}

BASE_TARGET_FIELDS = ("seed", "corpus_bytes", "heldout_every", "vocab_size", "context", "seq_len", "batch_size",
                      "target", "target_steps", "lr")
CHAT_FIELDS = BASE_TARGET_FIELDS + ("chat_conversations", "chat_steps", "chat_seq_len", "chat_code_rows", "chat_lr",
                                    "copy_rows", "copy_len", "copy_span")
SHORT_PROMPTS = "short_prompts.jsonl"  # hand-written one-line prompts, beside the held-out ones


def _key(recipe: DemoRecipe, fields: tuple[str, ...], extra: str = "") -> str:
    """A short hash of the recipe fields (and Python version: the corpus is its standard library) that decide
    a stage's result."""
    values = {f: asdict(recipe)[f] for f in fields} | {"python": sysconfig.get_python_version(), "extra": extra}
    return f"{zlib.crc32(json.dumps(values, sort_keys=True).encode()):08x}"


def base_target_dir(recipe: DemoRecipe) -> Path:
    """Where the pre-trained (pre-chat) target and its tokenizer are kept between builds, with the chat-tuned
    targets made from it (``chat-<key>/``): outside the shipped folder (``$DIFFUSPEC_CACHE`` or
    ``~/.cache/diffuspec``), keyed by the recipe fields that decide them."""
    root = Path(os.environ.get("DIFFUSPEC_CACHE", Path.home() / ".cache" / "diffuspec"))
    return root / f"demo-base-target-{_key(recipe, BASE_TARGET_FIELDS)}"


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


def raw_prompts(stream: torch.Tensor, newline_ids: list[int], prose: list[list[int]], n: int, max_len: int,
                rng: random.Random) -> list[list[int]]:
    """Varied-length prompts as users write them: from the start of a corpus line, either that one line or
    1..``max_len`` tokens; a fifth are the start of a docstring sentence."""
    newlines = set(newline_ids)
    line_starts = (torch.isin(stream[: -max_len - 1], torch.tensor(newline_ids)).nonzero().squeeze(1) + 1).tolist()
    prompts = []
    for _ in range(n):
        if rng.random() < 0.2:
            sentence = rng.choice(prose)
            prompts.append(sentence[: rng.randint(1, len(sentence))])
            continue
        window = stream[(start := rng.choice(line_starts)) : start + max_len].tolist()
        if rng.random() < 0.5:  # one line, its newline included or not
            ends = [i for i, t in enumerate(window) if t in newlines]
            length = ends[0] + rng.randint(0, 1) if ends else len(window)
        else:
            length = rng.randint(1, max_len)
        prompts.append(window[: max(1, length)])
    return prompts


def chat_stream(tokenizer, conversations: list[Conversation]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All conversations rendered with the chat template, back to back: (tokens, assistant mask, start of
    each conversation)."""
    ids: list[int] = []
    learn: list[int] = []
    starts = []
    for conversation in conversations:
        out = render(tokenizer, conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        starts.append(len(ids))
        ids += out["input_ids"]
        learn += out["assistant_masks"]
    return torch.tensor(ids), torch.tensor(learn, dtype=torch.bool), torch.tensor(starts)


def fine_tune_chat(target, recipe: DemoRecipe, chat_ids: torch.Tensor, chat_learn: torch.Tensor,
                   chat_starts: torch.Tensor, code_stream: torch.Tensor, ordinary: torch.Tensor, gen: torch.Generator,
                   device: str) -> list[float]:
    """Stage 3: the loss is on the assistant's tokens of windows that end where a conversation ends (its
    answers are at its end; a window long enough holds all of it); every batch also holds ``chat_code_rows``
    windows of raw corpus code (all tokens learnt), so code completion stays, and every step adds the loss of
    a batch of induction data, so the target learns to copy from its context."""
    chat_rows, n = recipe.batch_size - recipe.chat_code_rows, recipe.chat_seq_len
    ends = torch.cat([chat_starts[1:], torch.tensor([chat_ids.numel()])])

    def chat_batch(step: int) -> torch.Tensor:
        stops = ends[torch.randint(0, ends.numel(), (chat_rows,), generator=gen)]
        positions = (stops - n).clamp(min=0)[:, None] + torch.arange(n)
        code = random_windows(code_stream, recipe.chat_code_rows, n, gen)
        tokens = torch.cat([chat_ids[positions], code]).to(device)
        learn = torch.cat([chat_learn[positions], torch.ones_like(code, dtype=torch.bool)]).to(device)
        copies, copy_learn = repeated_sequences(ordinary, recipe.copy_rows, recipe.copy_len, recipe.copy_span, gen)
        return causal_lm_loss(target, tokens, learn) + causal_lm_loss(target, copies.to(device), copy_learn.to(device))

    return fit(target, chat_batch, recipe.chat_steps, recipe.chat_lr, "target (chat)")


def train_drafters(recipe: DemoRecipe, tokenizer, windows, stage, curves: dict, device: str):
    """Stages 5-6 from scratch: the diffusion drafter (causal pre-training, then Dream-style masked-diffusion
    adaptation) and the same-size AR drafter (causal LM, same data and budget), on distillation windows."""
    print("[5/8] diffusion drafter: causal pre-training, then Dream-style masked-diffusion adaptation")
    gen = stage(1)
    batch = windows(gen, recipe.batch_size)
    drafter = build_diffusion_model(recipe.drafter, tokenizer, recipe.context, shifted=True).to(device)
    set_bidirectional(drafter, False)
    curves["drafter: causal pre-training loss"] = fit(
        drafter, lambda s: causal_lm_loss(drafter, *batch()), recipe.drafter_steps, recipe.lr, "drafter (causal)"
    )
    set_bidirectional(drafter, True)

    def diffusion_loss(step: int) -> torch.Tensor:
        tokens, valid = batch()
        return masked_diffusion_loss(drafter, tokens, tokenizer.mask_token_id, gen, shifted=True, valid=valid)

    curves["drafter: masked-diffusion loss (shifted)"] = fit(
        drafter, diffusion_loss, recipe.adapt_steps, recipe.adapt_lr, "drafter (diffusion)"
    )
    print("[6/8] AR drafter (causal LM, same data and budget)")
    gen = stage(2)
    batch = windows(gen, recipe.batch_size)
    ar_drafter = build_ar_model(recipe.drafter, tokenizer, recipe.context).to(device)
    curves["AR drafter: causal LM loss"] = fit(
        ar_drafter, lambda s: causal_lm_loss(ar_drafter, *batch()), recipe.drafter_steps + recipe.adapt_steps,
        recipe.lr, "AR drafter",
    )
    return drafter, ar_drafter


def train_demo(
    out_dir: Path, recipe: DemoRecipe = PRESETS["demo"], device: str = "cpu", reuse_target: bool = False
) -> dict:
    """Rebuild the embedded demo pair into ``out_dir`` (target/, drafter/, ar_drafter/, prompts, metrics,
    plots). The pre-trained base target is saved to ``base_target_dir(recipe)``; ``reuse_target`` starts from
    the one saved there (with its tokenizer) instead of training it again."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..config import DiffuSpecConfig
    from ..engine import DiffuSpec

    out_dir = Path(out_dir)

    def stage(k: int) -> torch.Generator:  # each stage its own seed: stages stay reproducible on their own
        torch.manual_seed(recipe.seed + k)
        return torch.Generator().manual_seed(recipe.seed + k)

    print("[1/8] corpus, tokenizer, standard-library facts")
    train_texts, heldout_texts, files = stdlib_corpus(recipe.corpus_bytes, recipe.heldout_every)
    base_dir = base_target_dir(recipe)
    reused = reuse_target and (base_dir / "config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(base_dir) if reused else train_tokenizer(train_texts, recipe.vocab_size)
    tokenizer.chat_template = CHAT_TEMPLATE
    mask_id, pad_id = tokenizer.mask_token_id, tokenizer.pad_token_id
    train_stream, heldout_stream = token_stream(tokenizer, train_texts), token_stream(tokenizer, heldout_texts)
    facts = stdlib_facts()

    curves: dict[str, list[float]] = {}
    print(f"[2/8] base target (causal LM on the corpus): {f'reused from {base_dir}' if reused else 'training'}")
    gen = stage(0)
    if reused:
        target = AutoModelForCausalLM.from_pretrained(base_dir).to(device)
        if curve := json.loads((base_dir / "curve.json").read_text()):  # empty when the base was itself reused
            curves["target: causal LM loss"] = curve
    else:
        target = build_ar_model(recipe.target, tokenizer, recipe.context).to(device)
        curves["target: causal LM loss"] = fit(
            target, lambda s: causal_lm_loss(target, random_windows(train_stream, recipe.batch_size, recipe.seq_len, gen).to(device)),
            recipe.target_steps, recipe.lr, "target",
        )
        target.save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
        (base_dir / "curve.json").write_text(json.dumps(curves["target: causal LM loss"]))

    print("[3/8] chat fine-tune of the target: synthesised chat, RAG and tool conversations, raw code mixed in, "
          "induction data beside")
    conversations = synthesize(facts, recipe.chat_conversations, recipe.seed + 10, "train")
    chat_ids, chat_learn, chat_starts = chat_stream(tokenizer, conversations)
    chat_dir = base_dir / f"chat-{_key(recipe, CHAT_FIELDS, Path(chat_data.__file__).read_text())}"
    if reuse_target and (chat_dir / "config.json").exists():
        print(f"      reused from {chat_dir}")
        target = AutoModelForCausalLM.from_pretrained(chat_dir).to(device)
        curves["target: chat fine-tune loss"] = json.loads((chat_dir / "curve.json").read_text())
    else:
        curves["target: chat fine-tune loss"] = fine_tune_chat(
            target, recipe, chat_ids, chat_learn, chat_starts, train_stream, ordinary_token_ids(tokenizer), stage(6),
            device,
        )
        target.save_pretrained(chat_dir)
        (chat_dir / "curve.json").write_text(json.dumps(curves["target: chat fine-tune loss"]))

    print("[4/8] distillation set: the target's greedy continuations of varied-length raw and chat prompts")
    gen = stage(3)
    rng = random.Random(recipe.seed + 3)
    newline_ids = [i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])]
    prose = [tokenizer(f.sentence)["input_ids"] for f in facts]
    raw = raw_prompts(train_stream, newline_ids, prose, recipe.distil_prompts, recipe.distil_prompt_max, rng)
    chat_prompts = [
        list(render(tokenizer, c, prompt_only=True, tokenize=True, return_dict=False))
        for c in synthesize(facts, recipe.distil_chat_prompts, recipe.seed + 11, "train")
    ]
    # Wide batches: decoding is launch-bound on a GPU; on CPU 256 rows was the fastest per sequence measured.
    rows = 256 if torch.device(device).type == "cpu" else 2048
    raw_cont = greedy_continuations(target, raw, recipe.distil_continuation, batch=rows)
    chat_cont = greedy_continuations(target, chat_prompts, recipe.distil_continuation, until_eos=True, batch=rows)
    data = DistillationSet.build(raw + chat_prompts, raw_cont + chat_cont, pad_id, recipe.distil_context)
    ngram_rows, ngram_start = data.ngram_rows(recipe.cps_ngram_order - 1)
    cps_ngram = CorpusNGram.count(ngram_rows, len(tokenizer), recipe.cps_ngram_order, start=ngram_start)

    def windows(gen: torch.Generator, batch_size: int, continuation_only: bool = False):
        def batch() -> tuple[torch.Tensor, torch.Tensor]:
            rows = torch.randint(0, len(data), (batch_size,), generator=gen)
            tokens, valid, continuation = data.windows(rows, recipe.seq_len, gen)
            return tokens.to(device), (continuation if continuation_only else valid).to(device)
        return batch

    base_drafters = base_dir / "drafters"
    if reuse_target and (base_drafters / "drafter" / "config.json").exists():
        print(f"[5-6/8] drafters: warm start from {base_drafters} (aligned to the current target below)")
        drafter = AutoModelForCausalLM.from_pretrained(base_drafters / "drafter").to(device)
        ar_drafter = AutoModelForCausalLM.from_pretrained(base_drafters / "ar_drafter").to(device)
    else:
        drafter, ar_drafter = train_drafters(recipe, tokenizer, windows, stage, curves, device)
        for role, model in (("drafter", drafter), ("ar_drafter", ar_drafter)):
            model.save_pretrained(base_drafters / role)
    gen = stage(7)
    eval_prompts = [
        tokenizer.decode(w)
        for w in random_windows(heldout_stream, recipe.eval_prompts, recipe.seq_len // 2, gen).tolist()
    ]
    short_prompts = read_prompts(EMBEDDED_DIR / SHORT_PROMPTS)
    config = DiffuSpecConfig()
    engine = DiffuSpec(target, drafter, tokenizer, config, ar_drafter=ar_drafter, cps_ngram=cps_ngram)
    before = evaluate_pair(engine, eval_prompts, recipe.eval_new_tokens, variants=["diffuspec"])

    print("[7/8] align the drafter (streak distillation); distil the AR drafter on the same continuations")
    gen = stage(4)
    curves["drafter alignment: streak loss"], streaks = align_drafter(
        drafter, data, mask_id, steps=recipe.align_steps, lr=recipe.align_lr, batch_size=recipe.align_batch,
        block=recipe.align_block, min_block=min(4, recipe.align_block), generator=gen, shifted=True,
        context=recipe.distil_context,
    )
    curves["drafter alignment: expected streak"] = streaks
    gen = stage(5)
    batch = windows(gen, recipe.align_batch, continuation_only=True)
    curves["AR drafter distillation: loss"] = fit(
        ar_drafter, lambda s: causal_lm_loss(ar_drafter, *batch()), recipe.ar_distil_steps, recipe.align_lr,
        "AR drafter distil",
    )

    print("[8/8] evaluation (held-out code, short and chat prompts), model cards, plots")
    engine = DiffuSpec(target, drafter, tokenizer, config, ar_drafter=ar_drafter, cps_ngram=cps_ngram)
    after = evaluate_pair(engine, eval_prompts, recipe.eval_new_tokens,
                          variants=["diffuspec", "diffuspec-no-cps", "ar-drafter"])
    short = evaluate_pair(engine, short_prompts, recipe.eval_new_tokens, variants=["diffuspec"])
    heldout_chats = synthesize(facts, recipe.eval_chat, recipe.seed + 20, "eval")
    chat = evaluate_chat(engine, heldout_chats, recipe.eval_chat_new_tokens)
    chat["repeat_copy_accuracy"] = repeat_copy_accuracy(target, tokenizer)
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
        "base_target": {"reused": bool(reused), "dir": base_dir.name},
        "corpus": {"files": len(files), "train_tokens": train_stream.numel(), "heldout_tokens": heldout_stream.numel(),
                   "facts": len(facts), "chat_tokens": chat_ids.numel(), "distillation_rows": len(data)},
        "validation_loss": val_loss,
        "greedy_acceptance_before_alignment": before,
        "greedy_acceptance_after_alignment": after,
        "short_prompts": {"prompts": len(short_prompts), **short},
        "chat": chat,
        "curves": curves,
        "eval": {"prompts": len(eval_prompts), "new_tokens": recipe.eval_new_tokens, "engine_config": asdict(config)},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    common = {
        "corpus": f"CPython {sysconfig.get_python_version()} standard-library sources ({len(files)} files, tests "
        f"excluded, {train_stream.numel()} training tokens; 1 file in {recipe.heldout_every} held out by path hash)",
        "tokenizer": f"byte-level BPE, {len(tokenizer)} tokens, EOS {EOS_TOKEN}, mask {MASK_TOKEN}; chat template "
        "with tools (system/user/assistant/tool turns, `<tool_call>{...}</tool_call>`, assistant turns end with EOS)",
        "training command": "`diffuspec train-demo` (seed %d; see diffuspec/training/demo.py DemoRecipe)" % recipe.seed,
    }
    acceptance = (
        f"greedy MAT on {len(eval_prompts)} held-out prompts x {recipe.eval_new_tokens} tokens: "
        f"{before['diffuspec']['mat']:.2f} before alignment, {after['diffuspec']['mat']:.2f} after (CPS + ADL); "
        f"{short['diffuspec']['mat']:.2f} on {len(short_prompts)} one-line prompts; {chat['mat']:.2f} on "
        f"{chat['conversations']} held-out chat prompts"
    )
    parts = {
        "target": (target, "the AR target (verifier), a chat and tool-calling model", {
            "training": f"causal LM on the corpus, then {recipe.chat_steps} steps of chat fine-tuning on "
            f"{len(conversations)} synthesised conversations (chat, RAG, tool calls; loss on assistant turns) "
            "with raw code mixed in",
            "validation loss (causal LM, held out)": f"{val_loss['target']:.3f}",
            "held-out chat": f"{chat['rag_grounded_share']:.0%} of RAG answers reuse their context, "
            f"{chat['rag_degenerate_share']:.0%} degenerate; {chat['tool_calls_right_share']:.0%} of requested "
            "tool calls parse with the right name and arguments; repeat-copy accuracy "
            f"{chat['repeat_copy_accuracy']:.2f} (in-context copying of a repeated random sequence)",
        }),
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
    for role, (model, title, facts_) in parts.items():
        path = out_dir / role
        model.to("cpu").save_pretrained(path)
        tokenizer.save_pretrained(path)
        (path / "README.md").write_text(_model_card(role, title, model, {**common, **facts_}))
    cps_ngram.save(out_dir / "drafter" / CPS_NGRAM_FILE)
    (out_dir / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in eval_prompts))
    chat_texts = [render(tokenizer, c, prompt_only=True, tokenize=False) for c in heldout_chats]
    (out_dir / "chat_prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "kind": c.kind}) + "\n" for p, c in zip(chat_texts, heldout_chats))
    )
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_losses(curves, out_dir / "training_curves.png")
    return metrics
