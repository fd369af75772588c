"""diffuspec: lossless diffusion-drafted speculative decoding for Hugging Face models."""

from .config import DiffuSpecConfig, DiffuSpecError
from .drafters import ARDrafter, Draft, Drafter, MaskedDiffusionDrafter, PromptLookupDrafter
from .engine import DiffuSpec, Generation, StepEvent
from .stats import DecodingStats
from .verification import SamplingParams

__all__ = [
    "ARDrafter",
    "DecodingStats",
    "DiffuSpec",
    "DiffuSpecConfig",
    "DiffuSpecError",
    "Draft",
    "Drafter",
    "Generation",
    "MaskedDiffusionDrafter",
    "PromptLookupDrafter",
    "SamplingParams",
    "StepEvent",
]
