"""Per-generation statistics of the speculative loop."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PHASES = ("draft", "path_search", "verify", "other")


def per_position_acceptance(draft_lengths: list[int], accepted_lengths: list[int]) -> list[float]:
    """Entry i: of the steps that drafted at least i + 1 tokens, the share that accepted draft token i."""
    longest = max(draft_lengths, default=0)
    drafted, accepted = [0] * longest, [0] * longest
    for d, a in zip(draft_lengths, accepted_lengths):
        for i in range(d):
            drafted[i] += 1
            accepted[i] += i < a
    return [a / d for a, d in zip(accepted, drafted)]


@dataclass
class DecodingStats:
    """Running totals of one generation. MAT follows DiffuSpec: accepted draft tokens per verification
    step, the target's own (bonus or correction) token excluded."""

    steps: int = 0
    target_forwards: int = 0
    drafter_forwards: int = 0
    new_tokens: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    draft_lengths: list[int] = field(default_factory=list)
    accepted_lengths: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    wall_seconds: float = 0.0

    def record_step(self, draft_length: int, accepted: int, drafter_forwards: int) -> None:
        self.steps += 1
        self.target_forwards += 1
        self.drafter_forwards += drafter_forwards
        self.drafted_tokens += draft_length
        self.accepted_tokens += accepted
        self.draft_lengths.append(draft_length)
        self.accepted_lengths.append(accepted)

    def merge(self, other: DecodingStats) -> None:
        """Add another generation's totals to these (the benchmark sums a method's runs)."""
        for name in ("steps", "target_forwards", "drafter_forwards", "new_tokens", "drafted_tokens",
                     "accepted_tokens", "wall_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.draft_lengths += other.draft_lengths
        self.accepted_lengths += other.accepted_lengths
        for phase in PHASES:
            self.seconds[phase] += other.seconds[phase]

    @property
    def mean_accepted_tokens(self) -> float:
        """MAT: mean accepted draft tokens per verification step."""
        return self.accepted_tokens / self.steps if self.steps else 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.new_tokens / self.steps if self.steps else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def per_position_acceptance(self) -> list[float]:
        """Entry i: of the steps that drafted at least i + 1 tokens, the share that accepted draft token i."""
        return per_position_acceptance(self.draft_lengths, self.accepted_lengths)

    def summary(self) -> dict[str, Any]:
        """Everything as plain JSON-ready values."""
        return {
            **asdict(self),
            "mean_accepted_tokens": self.mean_accepted_tokens,
            "tokens_per_step": self.tokens_per_step,
            "acceptance_rate": self.acceptance_rate,
            "tokens_per_second": self.tokens_per_second,
            "per_position_acceptance": self.per_position_acceptance,
        }


def repeated_ngram_share(token_ids: list[int], n: int = 4) -> float:
    """Share of tokens that lie inside an n-gram seen earlier in the same output: 0 for text that never
    repeats itself, near 1 for a degenerate loop. Reported beside MAT, so a run that is fast only because it
    repeats itself (repetition is easy to draft) cannot pass as a good one."""
    if len(token_ids) < n:
        return 0.0
    seen: set[tuple[int, ...]] = set()
    repeated = [False] * len(token_ids)
    for i in range(len(token_ids) - n + 1):
        gram = tuple(token_ids[i : i + n])
        if gram in seen:
            repeated[i : i + n] = [True] * n
        seen.add(gram)
    return sum(repeated) / len(token_ids)
