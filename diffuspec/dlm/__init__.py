"""Decoding with a diffusion LM alone (mode "dlm") and Spiffy, its lossless self-speculative decoding
(mode "spiffy")."""

from .calibration import calibrate_graph
from .graph import GraphShape
from .settings import DenoisingStep, DLMSettings
from .spiffy import dlm_steps, spiffy_steps

__all__ = ["DLMSettings", "DenoisingStep", "GraphShape", "calibrate_graph", "dlm_steps", "spiffy_steps"]
