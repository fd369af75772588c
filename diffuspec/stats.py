"""Per-generation statistics of the speculative loop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PHASES = ("draft", "path_search", "verify", "other")


def per_position_acceptance(draft_lengths: Sequence[int], accepted_lengths: Sequence[int]) -> list[float]:
    """Entry i: of the steps that drafted at least i + 1 tokens, the share that accepted draft token i."""
    longest = max(draft_lengths, default=0)
    drafted, accepted = [0] * longest, [0] * longest
    for d, a in zip(draft_lengths, accepted_lengths):
        for i in range(d):
            drafted[i] += 1
            accepted[i] += i < a
    return [a / d for a, d in zip(accepted, drafted)]


@dataclass(frozen=True)
class DecodingStats:
    """Totals of one generation up to some step: an immutable snapshot, safe to hand to another thread.

    MAT follows DiffuSpec: accepted draft tokens per verification step, the target's own (bonus or correction)
    token excluded. ``predicted_tokens`` holds, per step, the tokens the length policy expected that step to
    commit (NaN where the policy makes no prediction); ``tokens_per_step`` is what was realised. In the DLM
    modes the DLM is the model decoded: ``target_forwards`` counts its passes and ``denoising_steps`` the
    sampler transitions they advanced.
    """

    steps: int = 0
    target_forwards: int = 0
    drafter_forwards: int = 0
    new_tokens: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    denoising_steps: int = 0
    draft_lengths: tuple[int, ...] = ()
    accepted_lengths: tuple[int, ...] = ()
    predicted_tokens: tuple[float, ...] = ()
    # Tree verification, per step: the rank of the tree's path the accepted branch lies on (0: the draft path,
    # or nothing accepted) and the tokens verified besides the root (the tree size; the draft length for a
    # single path).
    accepted_ranks: tuple[int, ...] = ()
    tree_sizes: tuple[int, ...] = ()
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    wall_seconds: float = 0.0

    def __add__(self, other: DecodingStats) -> DecodingStats:
        """Two generations' totals together (the benchmark sums a method's runs)."""
        merged = {name: getattr(self, name) + getattr(other, name) for name in _SUMMED}
        seconds = {phase: self.seconds[phase] + other.seconds[phase] for phase in PHASES}
        return DecodingStats(**merged, seconds=seconds)

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


_SUMMED = ("steps", "target_forwards", "drafter_forwards", "new_tokens", "drafted_tokens", "accepted_tokens",
           "denoising_steps", "draft_lengths", "accepted_lengths", "predicted_tokens", "accepted_ranks", "tree_sizes",
           "wall_seconds")


class StatsRecorder:
    """The running totals a decoding loop keeps; ``snapshot()`` freezes them for an event."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(("steps", "target_forwards", "drafter_forwards", "new_tokens",
                                     "drafted_tokens", "accepted_tokens", "denoising_steps"), 0)
        self.draft_lengths: list[int] = []
        self.accepted_lengths: list[int] = []
        self.predicted_tokens: list[float] = []
        self.accepted_ranks: list[int] = []
        self.tree_sizes: list[int] = []
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.wall_seconds = 0.0

    def step(self, drafted: int, accepted: int, new_tokens: int, *, target_forwards: int = 1,
             drafter_forwards: int = 0, denoising_steps: int = 0, predicted: float = float("nan"),
             accepted_rank: int = 0, tree_size: int | None = None) -> None:
        c = self.counts
        c["steps"] += 1
        c["target_forwards"] += target_forwards
        c["drafter_forwards"] += drafter_forwards
        c["drafted_tokens"] += drafted
        c["accepted_tokens"] += accepted
        c["new_tokens"] += new_tokens
        c["denoising_steps"] += denoising_steps
        self.draft_lengths.append(drafted)
        self.accepted_lengths.append(accepted)
        self.predicted_tokens.append(predicted)
        self.accepted_ranks.append(accepted_rank)
        self.tree_sizes.append(drafted if tree_size is None else tree_size)

    def snapshot(self) -> DecodingStats:
        return DecodingStats(
            **self.counts, draft_lengths=tuple(self.draft_lengths), accepted_lengths=tuple(self.accepted_lengths),
            predicted_tokens=tuple(self.predicted_tokens), accepted_ranks=tuple(self.accepted_ranks),
            tree_sizes=tuple(self.tree_sizes), seconds=dict(self.seconds), wall_seconds=self.wall_seconds,
        )

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
