"""LangChain integration of diffuspec: lossless diffusion-drafted speculative decoding."""

from ._common import STEP_EVENT
from .chat_models import ChatDiffuSpec
from .llms import DiffuSpecLLM

__all__ = ["STEP_EVENT", "ChatDiffuSpec", "DiffuSpecLLM"]
