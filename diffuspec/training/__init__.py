"""Training: the embedded demo pair (``train_demo``), and drafter alignment (SpecDiff-2 streak distillation)
for any pair (``align``).

Modules: ``data`` (corpus, tokenizer, prompt files), ``chat_data`` (synthesised chat, RAG and tool
conversations; the chat template), ``models``, ``objectives``, ``distillation`` (the target's continuations),
``fit`` (optimisation, alignment), ``evaluate``, ``demo`` (the recipe end to end), ``align``.
"""

from .align import align
from .chat_data import CHAT_TEMPLATE, Conversation, Fact, stdlib_facts, synthesize
from .data import random_windows, read_prompts, repeated_sequences, stdlib_corpus, token_stream, train_tokenizer
from .demo import PRESETS, DemoRecipe, base_target_dir, train_demo
from .distillation import DistillationSet, greedy_continuations
from .evaluate import evaluate_chat, evaluate_pair, repeat_copy_accuracy
from .fit import align_drafter, fit, plot_losses
from .models import ModelSize, build_ar_model, build_diffusion_model, set_bidirectional
from .objectives import causal_lm_loss, masked_diffusion_loss, streak_loss

__all__ = [
    "CHAT_TEMPLATE", "PRESETS", "Conversation", "DemoRecipe", "DistillationSet", "Fact", "ModelSize", "align",
    "align_drafter", "base_target_dir", "build_ar_model", "build_diffusion_model", "causal_lm_loss",
    "evaluate_chat", "evaluate_pair", "fit", "greedy_continuations", "masked_diffusion_loss", "plot_losses",
    "random_windows", "read_prompts", "repeat_copy_accuracy", "repeated_sequences", "set_bidirectional",
    "stdlib_corpus", "stdlib_facts", "streak_loss", "synthesize", "token_stream", "train_demo", "train_tokenizer",
]
