"""Remote-code diffusion drafters (``trust_remote_code=True``): what Dream and LLaDA need on transformers 5.23.

- **Dream** (``Dream-org/Dream-v0-Base-7B``, ``-Instruct-7B``, ``Dream-Coder-v0-*``; the DiffuSpec paper's
  drafter): ``DreamModel``, registered for ``AutoModel`` only; Qwen2.5's vocabulary plus added tokens
  (``<|mask|>`` = 151666, which a Qwen2.5 target's tokenizer lacks: the vocabularies are shared, see
  ``text_bridge.shares_vocabulary``); shifted logits (position t predicts t + 1, ``model_type == "dream"``);
  ``attention_mask`` None, ``"full"`` or a 4D mask; fills a ``DynamicCache``. Its rotary embedding is built with
  ``ROPE_INIT_FUNCTIONS[rope_type]`` and ``rope_type == "default"``, a key transformers 5 removed (each model's
  rotary class now computes the default itself), so loading it fails with ``KeyError: 'default'``.
  ``default_rope_shim`` puts an equivalent function under that key while remote code loads, and takes it away
  again after.
- **LLaDA** (``GSAI-ML/LLaDA-8B-Base``, ``-Instruct``): ``LLaDAModelLM``; its own 126k vocabulary (mask 126336),
  so a drafter for other targets only through text (``text_bridge``); unshifted logits; its forward asserts
  ``past_key_values is None and not use_cache``, so the drafter's prefix cache is switched off
  (``caches.accepts_cache`` finds out with one probe forward).

Both were verified against small replicas that honour these contracts (tests/test_adapters.py), not against the
published checkpoints, which cannot be downloaded here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _default_rope_parameters(config, device=None, seq_len=None, **_) -> tuple[torch.Tensor, float]:
    """Plain RoPE inverse frequencies, as transformers 4.x computed them under ``"default"``."""
    rope = getattr(config, "rope_parameters", None) or {}
    base = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * getattr(config, "partial_rotary_factor", 1.0))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))
    return inv_freq, 1.0


@contextmanager
def default_rope_shim(remote_code: bool) -> Iterator[None]:
    """While loading remote code (``remote_code``), give ``ROPE_INIT_FUNCTIONS`` a ``"default"`` entry if it has
    none; native models never ask for one, and nothing is left behind."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    install = remote_code and "default" not in ROPE_INIT_FUNCTIONS
    if install:
        ROPE_INIT_FUNCTIONS["default"] = _default_rope_parameters
    try:
        yield
    finally:
        if install:
            ROPE_INIT_FUNCTIONS.pop("default", None)
