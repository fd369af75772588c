"""What a generation streams (``StepEvent``) and returns (``Generation``), and the one place where committed
tokens become events: EOS, stop strings, the token budget and the context window end a generation the same
way in every mode."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .stats import DecodingStats, StatsRecorder
from .text import OutputText


@dataclass(frozen=True)
class StepEvent:
    """One step of a generation, as streamed. Immutable: safe to read in another thread."""

    text: str  # new text, safe to show: never part of a stop string
    token_ids: tuple[int, ...]  # tokens committed this step
    draft_length: int
    accepted: int  # draft tokens accepted (the target's own token excluded)
    stats: DecodingStats  # totals of the generation up to and including this step
    finish_reason: str | None = None  # "eos" | "length" | "stop" | "context" on the last event


@dataclass(frozen=True)
class Generation:
    text: str  # the generated text only, never the prompt
    token_ids: list[int]
    finish_reason: str  # "eos" | "length" (max_new_tokens) | "stop" | "context" (the context window is full)
    stats: DecodingStats

    @classmethod
    def collect(cls, events: Iterable[StepEvent]) -> Generation:
        text, ids, last = [], [], None
        for last in events:
            text.append(last.text)
            ids += last.token_ids
        return cls("".join(text), ids, last.finish_reason, last.stats)


class Emitter:
    """Turns each step's committed tokens into a ``StepEvent``, deciding when and why generation ends."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], eos_token_ids: frozenset[int], *, prompt_length: int,
                 max_new_tokens: int, context_window: int) -> None:
        self.output = OutputText(tokenizer, stops)
        self.eos, self.prompt_length = eos_token_ids, prompt_length
        self.max_new_tokens, self.context_window = max_new_tokens, context_window
        self.stats = StatsRecorder()
        self.start = time.perf_counter()
        self.generated = 0

    @property
    def room(self) -> int:
        """Tokens that may still be generated."""
        return min(self.max_new_tokens - self.generated, self.context_window - self.prompt_length - self.generated)

    def commit(self, tokens: Sequence[int]) -> tuple[list[int], str | None]:
        """The tokens that count (cut after EOS or a completed stop string) and why generation ends, if it does."""
        tokens = list(tokens)
        finish = None
        eos_at = next((i for i, t in enumerate(tokens) if t in self.eos), None)
        if eos_at is not None:
            tokens, finish = tokens[: eos_at + 1], "eos"
        kept = self.output.add(tokens)
        if self.output.stopped:
            tokens, finish = tokens[:kept], "stop"
        self.generated += len(tokens)
        if finish is None and self.generated >= self.max_new_tokens:
            finish = "length"
        elif finish is None and self.room <= 0:
            finish = "context"
        return tokens, finish

    def event(self, tokens: Sequence[int], drafted: int, accepted: int, finish: str | None) -> StepEvent:
        self.stats.wall_seconds = time.perf_counter() - self.start
        return StepEvent(self.output.take_new(final=finish is not None), tuple(tokens), drafted, accepted,
                         self.stats.snapshot(), finish)
