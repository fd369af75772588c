"""KV caches that can roll back: speculative decoding appends a drafted block, then drops the rejected tail.

One ``DynamicCache`` built from the model's config holds whatever layers the model has in transformers 5.23:
full attention, sliding-window and chunked attention (Mistral, Qwen2, Gemma 2/3/4, gpt-oss), KV-shared and
MLP-only placeholders (Gemma 4, MoE), and convolution states (LFM2). A sliding-window layer keeps only its
last W - 1 positions, and a convolution layer its last kernel-size inputs, so dropping tokens after they have
moved on needs the positions they evicted: ``activate_past_recording`` keeps everything fed since the last
``crop`` (as transformers' own assisted generation does), and ``crop`` restores an exact window and trims the
record. Hence the one rule every caller keeps: **a rollback drops at most the tokens fed since the previous
rollback** (``rollback(cache, 0)`` trims without dropping).

A recurrent state (Mamba, gated delta-net and other linear-attention layers) folds every token into one
tensor and cannot forget the last few, so such models are refused up front (``check_rollback``), as are
targets whose sparse attention selects keys differently in a block pass (``check_target``).

Plain full-attention layers are ``BufferedLayer``s: their keys and values are views of buffers that grow
geometrically, so a forward writes its new positions in place instead of concatenating the whole cache
(``DynamicLayer``'s ``torch.cat``, whose cost grows with the context: an update and a rollback of one layer took
30 / 65 / 158 us at 100 / 500 / 2000 positions, against 30 us at any length here), and a rollback only shortens
the views. Every other layout keeps transformers' own layer.
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from .errors import DiffuSpecError


class BufferedLayer(DynamicLayer):
    """A full-attention layer whose ``keys`` and ``values`` are views of the first positions of two buffers.

    ``update`` writes the new positions in place and returns longer views; ``crop`` (inherited) shortens them, so
    a rollback moves no data. Keys and values that others assign (a tree compaction's ``index_select``, an
    offload) are not views of the buffers: the next ``update`` copies them into fresh ones."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]  # 4D, so the length reads [-2]
        self.key_buffer = self.value_buffer = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        self.key_buffer = _buffer_holding(self.key_buffer, self.keys, end)
        self.value_buffer = _buffer_holding(self.value_buffer, self.values, end)
        self.key_buffer[..., start:end, :] = key_states
        self.value_buffer[..., start:end, :] = value_states
        self.keys, self.values = self.key_buffer[..., :end, :], self.value_buffer[..., :end, :]
        return self.keys, self.values


def _buffer_holding(buffer: torch.Tensor | None, held: torch.Tensor, length: int) -> torch.Tensor:
    """``buffer`` when ``held`` is a view of its first positions and it has room for ``length``; otherwise a new
    buffer, twice that room (geometric growth: copies stay amortised O(1) per position), starting with ``held``."""
    if (buffer is not None and length <= buffer.shape[-2] and held.data_ptr() == buffer.data_ptr()
            and held.stride() == buffer.stride()):
        return buffer
    grown = held.new_empty((*held.shape[:-2], 2 * length, held.shape[-1]))
    grown[..., : held.shape[-2], :] = held
    return grown


def new_cache(model: PreTrainedModel) -> DynamicCache:
    """An empty cache for ``model`` (sliding and hybrid layouts as its config says), ready to roll back; its
    plain full-attention layers are ``BufferedLayer``s."""
    cache = DynamicCache(config=model.config)
    cache.layers = [BufferedLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    cache.activate_past_recording()
    return cache


@functools.cache
def _cache_keyword(forward_owner: type) -> str:
    parameters = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(model: torch.nn.Module, cache) -> dict:
    """``{name: cache}`` for ``model``'s forward: transformers 5.24 renamed ``past_key_values`` to ``cache`` (the
    old name still works there but warns), older releases and remote code take ``past_key_values``."""
    return {_cache_keyword(type(model)): cache}


def rollback(cache: DynamicCache, drop: int) -> None:
    """Forget the last ``drop`` positions (0: nothing; sliding and convolution layers still trim what they
    recorded). Exact when ``drop`` is at most the tokens fed since the previous rollback."""
    cache.crop(-drop)


def has_sliding_window(model: PreTrainedModel) -> bool:
    """Whether any layer of ``model`` attends through a sliding (or chunked) window: then each layer type needs
    its own attention mask, which only the model can build."""
    return any(DynamicCache(config=model.config).is_sliding)


def check_target(model: PreTrainedModel) -> None:
    """Refuse a target that speculative decoding cannot verify losslessly: one whose cache cannot roll back, or
    one whose pass over a drafted block does not compute what token-by-token decoding does."""
    check_rollback(model, "target")
    if any(type(layer).__name__ == "DynamicIndexedLayer" for layer in DynamicCache(config=model.config).layers):
        topk = getattr(model.config.get_text_config(), "index_topk", None)
        raise DiffuSpecError(
            f"the target ({type(model).__name__}) uses DeepSeek sparse attention: in transformers 5.23 a pass over "
            f"several new tokens selects each query's top-{topk} keys differently from one token at a time, so once "
            "the context is longer than that a verified draft would not reproduce the model's own output. Use "
            "plain `model.generate` for this model, or a dense-attention target."
        )


def check_rollback(model: PreTrainedModel, role: str) -> None:
    """Refuse a model whose cache cannot drop tokens, naming the fix."""
    supports_dynamic = getattr(model, "_supports_default_dynamic_cache", lambda: True)()
    if getattr(model, "_is_stateful", False) or not supports_dynamic:
        raise DiffuSpecError(
            f"the {role} ({type(model).__name__}) keeps a recurrent state (Mamba / linear attention) or a cache of "
            "its own, which cannot forget rejected draft tokens: speculative decoding needs a Transformer whose "
            f"KV cache can roll back. Use an attention-based {role}, or plain `model.generate` for this model."
        )


def accepts_cache(model: PreTrainedModel) -> bool:
    """Whether ``model`` fills a ``DynamicCache`` passed to its forward. transformers' own models do; remote code
    may not: LLaDA asserts that no cache is passed, and other code may ignore one. Probed with one two-token
    forward, so a drafter's prefix cache is switched off only where it cannot work."""
    if type(model).__module__.startswith("transformers."):
        return True
    cache = new_cache(model)
    probe = torch.zeros(1, 2, dtype=torch.long, device=model.device)
    try:
        with torch.inference_mode():
            model(input_ids=probe, use_cache=True, **cache_kwargs(model, cache))
    except Exception:  # noqa: BLE001  whatever remote code does with a cache it cannot take (LLaDA: AssertionError)
        return False
    return cache.get_seq_length() == probe.shape[1]
