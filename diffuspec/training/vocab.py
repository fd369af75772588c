"""Draft vocabularies (FR-Spec / VocabTrim): the tokens a drafter may propose, the most frequent in the target's own
output. A drafter scores only these (its LM head shrinks by the vocabulary's ratio: 262,144 -> 32,768 rows cuts
it by 8x); the target still verifies over its full vocabulary, so a token outside the draft vocabulary costs a
rejection, never a wrong output."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def draft_vocabulary(output_counts: torch.Tensor, size: int, *, corpus_counts: torch.Tensor | None = None,
                     always: Iterable[int] = ()) -> torch.Tensor:
    """The ``size`` token ids (sorted) that the target's output uses most (``output_counts``), ties and unseen
    tokens ranked by ``corpus_counts`` (text the target reads: a larger, cheaper sample), ``always`` included
    first (the end-of-turn and EOS ids a draft must be able to end with)."""
    vocab = output_counts.numel()
    if not 0 < size <= vocab:
        raise ValueError(f"a draft vocabulary of {size} tokens does not fit a {vocab}-token vocabulary")
    score = output_counts.double() * (1.0 + (corpus_counts.double().max() if corpus_counts is not None else 0.0))
    if corpus_counts is not None:
        score += corpus_counts.double()
    forced = torch.tensor(sorted(set(always)), dtype=torch.long)
    if forced.numel():
        score[forced] = float("inf")
    return torch.sort(torch.topk(score, size).indices).values


def coverage(ids: torch.Tensor, tokens: Iterable[int], vocab_size: int) -> float:
    """The share of ``tokens`` inside the draft vocabulary ``ids``: the most of them a draft can match."""
    inside = torch.zeros(vocab_size, dtype=torch.bool)
    inside[ids] = True
    flat = torch.tensor(list(tokens), dtype=torch.long)
    return float(inside[flat].float().mean()) if flat.numel() else float("nan")


def index_of(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[vocab_size] each token's index in the draft vocabulary ``ids``, -1 outside it."""
    table = torch.full((vocab_size,), -1, dtype=torch.long)
    table[ids] = torch.arange(ids.numel())
    return table
