"""GenerationParams: the per-call knobs of ``generate`` / ``stream`` / ``astream`` and both integrations,
validated once, here. Every caller spells them through this one dataclass, so they cannot drift."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from .config import MODES, DiffuSpecError

SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed takes


def _is_int(value: Any) -> bool:
    """A true integer: Python or numpy ints, not bools (``True`` is an int to Python, never a count here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def normalize_stop(stop: Any) -> tuple[str, ...]:
    """``None``, one string, or a sequence of non-empty strings -> a tuple of strings."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, Sequence) or any(not isinstance(s, str) or not s for s in stop):
        raise DiffuSpecError(f"stop must be a non-empty string or a list of non-empty strings, got {stop!r}")
    return tuple(dict.fromkeys(stop))  # order kept, duplicates dropped


@dataclass(frozen=True)
class GenerationParams:
    """What one generation asks for. Constructing one validates it; errors name the problem and the fix.

    ``temperature`` 0 is greedy decoding (any positive value samples, however small: probabilities are
    computed stably). ``mode`` None means the engine's configured mode.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    mode: str | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise DiffuSpecError(message)

        need(
            _is_int(self.max_new_tokens) and self.max_new_tokens > 0,
            f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}",
        )
        need(
            _is_real(self.temperature) and math.isfinite(self.temperature) and self.temperature >= 0,
            f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}",
        )
        need(
            self.top_k is None or (_is_int(self.top_k) and self.top_k >= 1),
            f"top_k must be a positive integer or None, got {self.top_k!r}",
        )
        need(
            self.top_p is None or (_is_real(self.top_p) and 0.0 < self.top_p <= 1.0),
            f"top_p must be a number in (0, 1] or None, got {self.top_p!r}",
        )
        need(
            self.seed is None or (_is_int(self.seed) and SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]),
            f"seed must be an integer in [0, 2**64 - 1] or None, got {self.seed!r}",
        )
        need(
            self.mode is None or (isinstance(self.mode, str) and self.mode in MODES),
            f"mode {self.mode!r} is unknown: use one of {', '.join(MODES)} (or None for the engine's own)",
        )
        # Canonical types: numpy ints become ints, a stop string a tuple (frozen: set through object).
        object.__setattr__(self, "stop", normalize_stop(self.stop))
        object.__setattr__(self, "max_new_tokens", int(self.max_new_tokens))
        object.__setattr__(self, "temperature", float(self.temperature))
        for name in ("top_k", "seed"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int(getattr(self, name)))
        if self.top_p is not None:
            object.__setattr__(self, "top_p", float(self.top_p))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, base: GenerationParams | None = None, /, **changes: Any) -> GenerationParams:
        """``base`` (or the defaults) with ``changes``; an unknown name is refused with the valid ones."""
        unknown = sorted(set(changes) - set(cls.names()))
        if unknown:
            raise DiffuSpecError(
                f"unknown generation argument(s) {', '.join(unknown)}: valid ones are {', '.join(cls.names())}"
            )
        return replace(base or cls(), **changes)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.names()}

    def merged_stop(self, extra: Sequence[str] | None) -> GenerationParams:
        """These params with more stop strings (LangChain passes ``stop`` beside the constructor's)."""
        return replace(self, stop=(*self.stop, *normalize_stop(extra)))
