"""LangChain integration of diffuspec: lossless diffusion-drafted speculative decoding."""

from .chat_models import ChatDiffuSpec
from .llms import STEP_EVENT, DiffuSpecLLM

__all__ = ["STEP_EVENT", "ChatDiffuSpec", "DiffuSpecLLM"]
