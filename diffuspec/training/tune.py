"""Tuning a pretrained causal LM to chat, ground answers in a context and call tools (``diffuspec tune-target``).

A LoRA adapter (peft) on every attention and MLP projection, trained on the synthesised conversations of
``chat_data`` rendered through a chat template with tools, the loss on the assistant's tokens only. The
embedding (tied to the LM head in Gemma) stays frozen, so what the tuning learnt is a few MB: the adapter is
what ships, merged into the base weights when the model is loaded (``merge_tuning``). Checkpointed: an
interrupted run resumes from its last checkpoint with the same command.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..tuning import TUNING_FILE, set_chat, template_text
from .chat_data import Conversation, render, stdlib_facts, synthesize
from .evaluate import evaluate_chat

CHAT_TEMPLATE_FILE = "chat_template.jinja"
ADAPTER_DIR = "adapter"
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TuningRecipe:
    seed: int = 0
    conversations: int = 8000  # synthesised training conversations (each seen about once)
    steps: int = 450
    batch_size: int = 8
    lr: float = 5e-4
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    modules: tuple[str, ...] = LORA_MODULES
    max_length: int = 320  # tokens of a rendered conversation; longer ones are left out
    eval_conversations: int = 120  # held-out modules, schemas, phrasings and fact templates
    eval_new_tokens: int = 64
    checkpoint_every: int = 25
    end_of_turn: tuple[str, ...] = ("<end_of_turn>",)  # tokens that end an answer besides EOS
    template: str = field(default="gemma_tools", compare=False)  # a file in diffuspec/chat_templates/


def rendered_rows(tokenizer: PreTrainedTokenizerBase, conversations: list[Conversation],
                  max_length: int) -> list[tuple[list[int], list[bool]]]:
    """(token ids, learn mask) per conversation: the mask marks the assistant's tokens."""
    rows = []
    for conversation in conversations:
        out = render(tokenizer, conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = list(out["input_ids"]), [bool(m) for m in out["assistant_masks"]]
        if len(ids) <= max_length and any(mask):
            rows.append((ids, mask))
    return rows


def length_batches(rows: list, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Row indices in batches of similar length (little padding), batches in random order."""
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i][0]), rng.random()))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def padded(rows: list[tuple[list[int], list[bool]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [b, n] ids and learn mask (padding never learnt; causal attention keeps it unseen)."""
    n = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    learn = torch.zeros((len(rows), n), dtype=torch.bool)
    for i, (row, mask) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        learn[i, : len(mask)] = torch.tensor(mask)
    return ids, learn


def answer_loss(model: PreTrainedModel, ids: torch.Tensor, learn: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the learnt positions only, with the LM head applied to those positions alone
    (a 262k-row head over every position would cost more than the whole body)."""
    hidden = model.get_decoder()(input_ids=ids).last_hidden_state
    targets = learn[:, 1:]
    logits = model.get_output_embeddings()(hidden[:, :-1][targets])
    return F.cross_entropy(logits.float(), ids[:, 1:][targets])


def lora_model(model: PreTrainedModel, recipe: TuningRecipe):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
                        target_modules=list(recipe.modules), bias="none")
    return get_peft_model(model, config)


def tune_target(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: str | Path,
                recipe: TuningRecipe = TuningRecipe(), log=print) -> dict:
    """Tune ``model`` (loaded in float32) with ``recipe``; write the adapter, the chat template and
    ``tuning.json`` into ``out`` and return the metrics. Resumes from ``out/checkpoint`` when it exists."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    tokenizer.chat_template = template_text(recipe.template)
    facts = stdlib_facts()
    rows = rendered_rows(tokenizer, synthesize(facts, recipe.conversations, recipe.seed, "train"), recipe.max_length)
    rng = random.Random(recipe.seed)
    batches = length_batches(rows, recipe.batch_size, rng)
    log(f"tune-target: {len(rows)} conversations, {sum(len(r[0]) for r in rows)} tokens "
        f"({sum(sum(r[1]) for r in rows)} learnt), {recipe.steps} steps of {recipe.batch_size}")

    model = lora_model(model, recipe)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=recipe.lr, weight_decay=0.0, betas=(0.9, 0.99))
    warmup = max(1, recipe.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, recipe.steps) / recipe.steps)))
    checkpoint = out / "checkpoint"
    losses: list[float] = []
    start = 0
    if (checkpoint / "state.pt").is_file():
        state = torch.load(checkpoint / "state.pt", weights_only=False)
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start, losses = state["step"], state["losses"]
        log(f"tune-target: resumed at step {start}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.train()
    began = time.perf_counter()
    for step in range(start, recipe.steps):
        ids, learn = padded([rows[i] for i in batches[step % len(batches)]], pad)
        loss = answer_loss(model, ids, learn)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        done = step + 1
        if done % 10 == 0 or done == recipe.steps:
            per_step = (time.perf_counter() - began) / (done - start)
            log(f"tune-target: step {done}/{recipe.steps} loss {sum(losses[-10:]) / len(losses[-10:]):.3f} "
                f"({per_step:.1f} s/step, {per_step * (recipe.steps - done) / 60:.0f} min left)")
        if done % recipe.checkpoint_every == 0 and done < recipe.steps:
            checkpoint.mkdir(exist_ok=True)
            trained = {k: v for k, v in model.state_dict().items() if "lora_" in k}
            torch.save({"model": trained, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                        "step": done, "losses": losses}, checkpoint / "state.part")
            (checkpoint / "state.part").replace(checkpoint / "state.pt")
    model.eval()
    seconds = time.perf_counter() - began
    model.save_pretrained(out / ADAPTER_DIR)
    shutil.rmtree(checkpoint, ignore_errors=True)
    (out / CHAT_TEMPLATE_FILE).write_text(tokenizer.chat_template)
    (out / TUNING_FILE).write_text(json.dumps({"adapter": ADAPTER_DIR, "chat_template": CHAT_TEMPLATE_FILE,
                                               "end_of_turn": list(recipe.end_of_turn)}, indent=2) + "\n")
    merged = model.merge_and_unload()
    set_chat(merged, tokenizer, None, recipe.end_of_turn)
    metrics = {"recipe": asdict(recipe), "train_seconds": seconds, "train_losses": losses,
               "trainable_parameters": sum(p.numel() for p in trainable)}
    metrics["heldout"] = evaluate_tuned(merged, tokenizer, recipe)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def evaluate_tuned(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, recipe: TuningRecipe) -> dict:
    """The tuned target alone (greedy) on held-out conversations."""
    from ..config import DiffuSpecConfig
    from ..engine import DiffuSpec

    engine = DiffuSpec(model, None, tokenizer, DiffuSpecConfig(mode="ar"))
    heldout = synthesize(stdlib_facts(), recipe.eval_conversations, recipe.seed + 20, "eval")
    return evaluate_chat(engine, heldout, recipe.eval_new_tokens, mode="ar")
