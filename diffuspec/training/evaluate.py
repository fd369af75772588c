"""Evaluation of a pair: greedy MAT of each drafting variant (every output checked against the target's own
greedy output), and the quality of chat answers on held-out conversations."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import torch

from ..chat import parse_tool_calls
from ..stats import repeated_ngram_share
from .chat_data import Conversation, render
from .data import ordinary_token_ids

DEGENERATE_SHARE = 0.5  # an answer with over half its tokens inside repeated 4-grams is a loop, not an answer
GROUNDED_SHARE = 0.5  # an answer is grounded when at least half its words come from the context


def _greedy_checked(engine, prompt, new_tokens: int, mode: str | None = None, reference=None):
    out = engine.generate(prompt, new_tokens, mode=mode) if mode else engine.generate(prompt, new_tokens)
    if reference is None:
        reference = engine.generate(prompt, new_tokens, mode="ar").token_ids
    if out.token_ids != reference:
        raise RuntimeError(f"{mode or 'default'} differs from the target's greedy output on {str(prompt)[:40]!r}")
    return out


def evaluate_pair(
    engine, prompts: Sequence, new_tokens: int, variants: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Greedy MAT and tokens per step of each drafting variant on ``prompts`` (text or token ids); every
    output is checked against the target's own greedy output. (``diffuspec-online-ngram`` equals
    ``diffuspec`` when the engine has no corpus n-gram table.)"""
    table = {
        "diffuspec": (engine, "diffuspec"),
        # the proxy without the corpus table, lambda as the engine uses it then
        "diffuspec-online-ngram": (engine.with_config(cps_corpus_weight=0.0, cps_lambda=0.9), "diffuspec"),
        "diffuspec-no-cps": (engine.with_config(cps=False), "diffuspec"),
        "ar-drafter": (engine, "ar-drafter"),
    }
    references = [engine.generate(p, new_tokens, mode="ar").token_ids for p in prompts]
    results = {}
    for name in variants or table:
        variant, mode = table[name]
        if mode not in variant.modes:
            continue
        steps = accepted = tokens = 0
        for prompt, reference in zip(prompts, references):
            out = _greedy_checked(variant, prompt, new_tokens, mode, reference)
            steps += out.stats.steps
            accepted += out.stats.accepted_tokens
            tokens += out.stats.new_tokens
        results[name] = {"mat": accepted / steps, "tokens_per_step": tokens / steps}
    return results


def repeat_copy_accuracy(model, tokenizer, rows: int = 16, length: int = 30, seed: int = 0) -> float:
    """Share of the second copy of a repeated random token sequence that a causal LM predicts right (greedy,
    teacher-forced). Near 1 for a model with induction heads; near 0 for one that cannot copy from its context,
    and then no answer can quote a retrieved passage and no tool call can copy a name or an argument: the
    first check for a chat model that must ground its answers."""
    generator = torch.Generator().manual_seed(seed)
    ordinary = ordinary_token_ids(tokenizer)
    sequence = ordinary[torch.randint(0, ordinary.numel(), (rows, length), generator=generator)]
    tokens = torch.cat([sequence, sequence], dim=1).to(model.device)
    with torch.no_grad():
        predicted = model(input_ids=tokens).logits[:, length:-1].argmax(-1)
    return (predicted == tokens[:, length + 1 :]).float().mean().item()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z_][a-z0-9_]{2,}", text.lower())


def reuses_context(answer: str, context: str) -> bool:
    words = _words(answer)
    return len(words) >= 3 and sum(w in set(_words(context)) for w in words) >= GROUNDED_SHARE * len(words)


def call_matches(answer: str, expected: dict) -> bool:
    """The answer holds exactly one tool call, with the expected name and arguments."""
    _, blocks = parse_tool_calls(answer)
    calls = [b for b in blocks if not b.get("error")]
    return len(blocks) == len(calls) == 1 and calls[0]["name"] == expected["name"] and calls[0]["args"] == expected["arguments"]


def json_matches(answer: str, expected: dict) -> bool:
    """The answer is one JSON object equal to the expected arguments."""
    try:
        return json.loads(answer.strip()) == expected["arguments"]
    except json.JSONDecodeError:
        return False


def evaluate_chat(engine, conversations: Sequence[Conversation], new_tokens: int, mode: str | None = None) -> dict:
    """Decoding in ``mode`` (default: the engine's; any other mode is checked equal to the target's greedy
    output) on held-out conversations: grounded and degenerate shares of RAG answers, tool calls and JSON answers
    with the right name and arguments, tool results used in the answer, and MAT over all of them."""
    rag = grounded = degenerate = calls = right_calls = results = used = steps = accepted = 0
    samples, sampled = [], {}
    for conversation in conversations:
        prompt = render(engine.tokenizer, conversation, prompt_only=True, tokenize=True, return_dict=False)
        out = (engine.generate(list(prompt), new_tokens, mode="ar") if mode == "ar"
               else _greedy_checked(engine, list(prompt), new_tokens, mode))
        steps, accepted = steps + out.stats.steps, accepted + out.stats.accepted_tokens
        if conversation.kind == "rag":
            rag += 1
            answerable = conversation.extra.get("answerable", True)
            grounded += reuses_context(out.text, conversation.context) if answerable else 1
            degenerate += repeated_ngram_share(out.token_ids) > DEGENERATE_SHARE
        elif conversation.kind == "json":
            calls += 1
            right_calls += json_matches(out.text, conversation.expected_call)
        elif conversation.expected_call:
            calls += 1
            right_calls += call_matches(out.text, conversation.expected_call)
        elif "result" in conversation.extra:
            results += 1
            used += conversation.extra["result"] in out.text
        if sampled.get(conversation.kind, 0) < 2:
            sampled[conversation.kind] = sampled.get(conversation.kind, 0) + 1
            samples.append({"kind": conversation.kind, "prompt": engine.tokenizer.decode(prompt)[-300:],
                            "answer": out.text})
    return {
        "conversations": len(conversations), "mat": accepted / max(steps, 1),
        "rag_answers": rag, "rag_grounded_share": grounded / max(rag, 1), "rag_degenerate_share": degenerate / max(rag, 1),
        "tool_calls_requested": calls, "tool_calls_right_share": right_calls / max(calls, 1),
        "tool_results": results, "tool_result_used_share": used / max(results, 1),
        "samples": samples,
    }
