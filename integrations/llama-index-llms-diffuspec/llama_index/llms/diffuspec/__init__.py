"""LlamaIndex integration of diffuspec: lossless diffusion-drafted speculative decoding."""

from .base import DiffuSpecLLM, DiffuSpecStepEvent

__all__ = ["DiffuSpecLLM", "DiffuSpecStepEvent"]
