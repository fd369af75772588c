"""diffuspec: lossless diffusion-drafted speculative decoding for Hugging Face models.

The public names load lazily: ``import diffuspec`` stays cheap (no torch or transformers import) until an
engine piece is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "DiffuSpec": "engine",
    "DiffuSpecConfig": "config",
    "DiffuSpecError": "errors",
    "EngineOverloaded": "errors",
    "GenerationParams": "params",
    "StepEvent": "events",
    "Generation": "events",
    "DecodingStats": "stats",
    "SamplingParams": "verification",
    "Drafter": "drafters",
    "Draft": "drafters",
    "MaskedDiffusionDrafter": "drafters",
    "ARDrafter": "drafters",
    "PromptLookupDrafter": "drafters",
    "Proposer": "proposers",
    "Proposal": "proposers",
    "Outcome": "proposers",
}

__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from .config import DiffuSpecConfig
    from .drafters import ARDrafter, Draft, Drafter, MaskedDiffusionDrafter, PromptLookupDrafter
    from .engine import DiffuSpec
    from .errors import DiffuSpecError, EngineOverloaded
    from .events import Generation, StepEvent
    from .params import GenerationParams
    from .proposers import Outcome, Proposal, Proposer
    from .stats import DecodingStats
    from .verification import SamplingParams


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'diffuspec' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value
