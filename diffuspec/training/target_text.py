"""The target's own text, for drafters that learn to predict it: prompts (chat prompts through the target's chat
template, standard-library code and prose), the target's greedy continuations of them (generated in chunks and
kept on disk, so an interrupted run resumes where it stopped: generation is the expensive part) and the draft
vocabulary's token counts.

Drafters learn only from the target's own greedy text: a drafter is judged on how well it predicts the target,
and a continuation the target wrote itself is exact supervision for every position of a draft block (the
target's argmax over someone else's text is exact only for the first position after each prefix).
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..caches import cache_kwargs, new_cache


def newline_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids whose text holds a newline (where corpus lines start)."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [i for i, text in enumerate(texts) if "\n" in text]


def distillation_prompts(tokenizer: PreTrainedTokenizerBase, *, raw: int, chat: int, seed: int,
                         split: str = "train", prompt_max: int = 64, corpus_bytes: int = 2_000_000,
                         requests: int = 0) -> list[tuple[str, list[int]]]:
    """(kind, token ids) prompts: ``raw`` varied-length standard-library code and docstring prose (``train-demo``'s
    ``raw_prompts``; ``split="eval"`` cuts them from the held-out files) and ``chat`` synthesised conversations
    (``chat_data``, that split) rendered with the tokenizer's chat template, when it has one, then ``requests``
    open requests (``chat_data.open_requests``: write, explain, compare...) through the same template."""
    from .chat_data import open_requests, render, stdlib_facts, synthesize
    from .data import stdlib_corpus, token_stream
    from .demo import raw_prompts

    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    train_texts, heldout_texts, _ = stdlib_corpus(corpus_bytes, 10)
    stream = token_stream(tokenizer, train_texts if split == "train" else heldout_texts)
    if raw and stream.numel() <= 2 * prompt_max + 2:
        raise ValueError(f"the {split} split of {corpus_bytes} corpus bytes is too short for prompts of up to "
                         f"{prompt_max} tokens: raise corpus_bytes")
    facts = stdlib_facts()
    prose = [tokenizer(f.sentence, add_special_tokens=False)["input_ids"] for f in facts]
    rng = random.Random(seed + (split == "eval"))
    prompts = [("raw", p) for p in raw_prompts(stream, newline_token_ids(tokenizer), prose, raw, prompt_max, rng)]
    if chat and tokenizer.chat_template:
        conversations = synthesize(facts, chat, seed + 11 + (split == "eval"), split)
        prompts += [(f"chat:{c.kind}", list(render(tokenizer, c, prompt_only=True, tokenize=True, return_dict=False)))
                    for c in conversations]
    if requests and tokenizer.chat_template:
        prompts += [("chat:open", list(render(tokenizer, c, prompt_only=True, tokenize=True, return_dict=False)))
                    for c in open_requests(facts, requests, seed, split)]
    return prompts


def cut_at_end(tokens: Sequence[int], ends: Collection[int]) -> list[int]:
    """``tokens`` up to and including the first one in ``ends`` (where generation stops)."""
    for i, token in enumerate(tokens):
        if token in ends:
            return list(tokens[: i + 1])
    return list(tokens)


@dataclass
class TargetRows:
    """Rows of prompt (its last ``context`` tokens) + the target's greedy continuation, and the target's hidden
    states at ``layers`` (indices into ``hidden_states``) for every position of a row but its last (the states a
    drafter reads: the last token's are computed only when the target reads it), bfloat16."""

    layers: tuple[int, ...]
    tokens: list[list[int]]
    prompt_lens: list[int]  # prompt tokens kept at the start of each row
    states: list[torch.Tensor]  # per row [len(row) - 1, len(layers) * hidden]

    def __len__(self) -> int:
        return len(self.tokens)

    def continuations(self) -> list[list[int]]:
        return [row[p:] for row, p in zip(self.tokens, self.prompt_lens)]

    def select(self, layers: Sequence[int]) -> TargetRows:
        """The same rows with the states of ``layers`` only (each must be one of ``self.layers``)."""
        missing = sorted(set(layers) - set(self.layers))
        if missing:
            raise ValueError(f"hidden states of layers {missing} were not kept (kept: {list(self.layers)})")
        width = self.states[0].shape[-1] // len(self.layers)
        index = torch.cat([torch.arange(width) + self.layers.index(layer) * width for layer in layers])
        return TargetRows(tuple(layers), self.tokens, self.prompt_lens, [s[:, index] for s in self.states])

    @classmethod
    def concat(cls, parts: Sequence[TargetRows]) -> TargetRows:
        return cls(parts[0].layers, [t for p in parts for t in p.tokens], [n for p in parts for n in p.prompt_lens],
                   [s for p in parts for s in p.states])


@torch.no_grad()
def greedy_with_states(target: PreTrainedModel, prompts: Sequence[Sequence[int]], length: int, *,
                       ends: Collection[int], stops: Sequence[bool], layers: Sequence[int], context: int,
                       ) -> TargetRows:
    """The target's greedy continuations of ``prompts`` (one left-padded batch, one cached forward per token) with
    its hidden states at ``layers``. A row whose ``stops`` is true ends at its first token of ``ends`` (a chat
    answer); the others run ``length`` tokens with those tokens suppressed (a window of a long file). Rows keep
    the last ``context`` prompt tokens; the states are those of the whole prompt (the target read all of it)."""
    device = target.device
    pad = target.config.pad_token_id if target.config.pad_token_id is not None else 0
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for r, prompt in enumerate(prompts):
        ids[r, width - len(prompt) :] = torch.tensor(prompt, device=device)
        mask[r, width - len(prompt) :] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    end_ids = torch.tensor(sorted(ends), dtype=torch.long, device=device)
    suppress = torch.tensor([not s for s in stops], device=device)[:, None] & torch.isin(
        torch.arange(target.get_output_embeddings().weight.shape[0], device=device), end_ids)[None]
    cache = new_cache(target)
    generated, states = [], []
    feed = ids
    for step in range(length):
        out = target(input_ids=feed, attention_mask=mask, position_ids=positions, **cache_kwargs(target, cache),
                     use_cache=True, output_hidden_states=True, logits_to_keep=1)
        states.append(torch.cat([out.hidden_states[i] for i in layers], dim=-1).to(torch.bfloat16))
        feed = out.logits[:, -1].float().masked_fill(suppress, float("-inf")).argmax(dim=-1, keepdim=True)
        generated.append(feed)
        if all(stops) and bool(torch.isin(torch.cat(generated, dim=1), end_ids).any(dim=1).all()):
            break  # every row has ended
        mask = torch.cat([mask, torch.ones_like(feed)], dim=1)
        positions = positions[:, -1:] + 1
    all_states = torch.cat(states, dim=1)  # [b, width + steps - 1, ...]: the last token was never read
    made = torch.cat(generated, dim=1).tolist()
    rows = TargetRows(tuple(layers), [], [], [])
    for r, prompt in enumerate(prompts):
        continuation = cut_at_end(made[r], ends) if stops[r] else made[r]
        kept = min(len(prompt), context)
        row_states = all_states[r, width - kept : width + len(continuation) - 1]
        rows.tokens.append(list(prompt[-kept:]) + continuation)
        rows.prompt_lens.append(kept)
        rows.states.append(row_states.cpu().clone())
    return rows



GROUP = 256  # prompts of one kind sorted by length together (a larger set of the same recipe extends the groups)


def target_rows_cached(target: PreTrainedModel, prompts: Sequence[tuple[str, list[int]]], length: int,
                       ends: Collection[int], folder: Path, *, layers: Sequence[int], context: int,
                       chunk: int = 32) -> TargetRows:
    """``greedy_with_states`` over ``prompts`` (kind, ids), ``chunk`` prompts at a time, each chunk saved in
    ``folder`` as it is done (named by a hash of its prompts and settings): a rerun loads the chunks there (with
    the states of ``layers``, which they must hold) and generates the rest. Chunks hold prompts of similar length
    (little padding): each run of ``GROUP`` prompts of one kind (chat or not) is sorted by length, so a recipe
    with more prompts reuses every whole group of a smaller one. Chat prompts (kind ``chat...``) stop at an end
    token. Rows come back in the order of ``prompts``."""
    chat = [kind.startswith("chat") for kind, _ in prompts]
    seen = {True: 0, False: 0}
    rank = []  # each prompt's index among the prompts of its kind
    for is_chat in chat:
        rank.append(seen[is_chat])
        seen[is_chat] += 1
    order = sorted(range(len(prompts)), key=lambda i: (chat[i], rank[i] // GROUP, len(prompts[i][1]), i))
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for start in range(0, len(order), chunk):
        picked = [prompts[i] for i in order[start : start + chunk]]
        key = zlib.crc32(json.dumps([picked, length, sorted(ends), context]).encode())
        path = folder / f"rows-{key:08x}.pt"
        if path.is_file():  # kept with the states of more layers, perhaps: those asked for
            parts.append(TargetRows(**torch.load(path)).select(layers))
            continue
        part = greedy_with_states(target, [p for _, p in picked], length, ends=ends,
                                  stops=[kind.startswith("chat") for kind, _ in picked], layers=layers,
                                  context=context)
        torch.save(vars(part), path)
        parts.append(part)
        print(f"      target rows: {min(start + chunk, len(order))}/{len(order)}", flush=True)
    merged = TargetRows.concat(parts)
    back = sorted(range(len(order)), key=order.__getitem__)  # position of each prompt in generation order
    return TargetRows(merged.layers, [merged.tokens[i] for i in back], [merged.prompt_lens[i] for i in back],
                      [merged.states[i] for i in back])


@dataclass(frozen=True)
class TextRecipe:
    """Which target text a drafter learns from. Two drafters trained with one recipe and one work folder learn
    from the very same rows (the peer comparison's equal terms)."""

    seed: int = 0
    raw_prompts: int = 768  # standard-library code and docstring prose
    chat_prompts: int = 768  # synthesised conversations through the target's chat template
    request_prompts: int = 0  # open requests (write, explain, compare...) through the chat template
    prompt_max: int = 64  # raw prompts' longest length
    continuation: int = 64  # tokens the target writes per prompt (a chat answer may end sooner)
    context: int = 128  # prompt tokens kept per row
    eval_raw_prompts: int = 32  # held-out prompts (held-out files, held-out chat split)
    eval_chat_prompts: int = 32
    eval_request_prompts: int = 0
    corpus_bytes: int = 2_000_000
    chunk: int = 32  # prompts per generation chunk (one checkpoint each)


def end_token_ids(target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The tokens that end a chat answer: the target's generation config's EOS ids and the tokenizer's EOS."""
    eos = target.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return set(eos) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def target_text(target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, recipe: TextRecipe, work: Path,
                layers: Sequence[int], log=print) -> dict[str, TargetRows]:
    """{"train": rows, "eval": held-out rows} of ``recipe``, with the states of ``layers``, cached under ``work``."""
    ends = end_token_ids(target, tokenizer)
    parts = {}
    for split, raw, chat, requests in (
            ("eval", recipe.eval_raw_prompts, recipe.eval_chat_prompts, recipe.eval_request_prompts),
            ("train", recipe.raw_prompts, recipe.chat_prompts, recipe.request_prompts)):
        prompts = distillation_prompts(tokenizer, raw=raw, chat=chat, seed=recipe.seed, split=split,
                                       prompt_max=recipe.prompt_max, corpus_bytes=recipe.corpus_bytes,
                                       requests=requests)
        log(f"      {split}: {len(prompts)} prompts")
        parts[split] = target_rows_cached(target, prompts, recipe.continuation, ends, work / split, layers=layers,
                                          context=recipe.context, chunk=recipe.chunk)
    return parts


def token_counts(rows: Sequence[Sequence[int]], vocab_size: int) -> torch.Tensor:
    """[vocab_size] how often each token occurs in ``rows``."""
    flat = torch.tensor([t for row in rows for t in row], dtype=torch.long)
    return torch.bincount(flat, minlength=vocab_size)[:vocab_size]
