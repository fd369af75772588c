"""The engine tests' fixtures (defined with the helpers in tiny_models.py)."""

from tiny_models import drafter, targets, tokenizer  # noqa: F401  (pytest finds fixtures by name here)
