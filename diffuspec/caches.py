"""KV caches that can roll back: speculative decoding appends a drafted block, then drops the rejected tail.

A sliding-window layer of a ``DynamicCache`` keeps only its last W positions, so dropping tokens after the
window has moved needs the positions it evicted: ``activate_past_recording`` keeps them (as transformers'
own assisted generation does), and ``crop`` then restores an exact window.
"""

from __future__ import annotations

from transformers import DynamicCache, PreTrainedModel


def new_cache(model: PreTrainedModel) -> DynamicCache:
    """An empty cache for ``model`` (sliding and hybrid layouts as its config says), ready to roll back."""
    cache = DynamicCache(config=model.config)
    cache.activate_past_recording()
    return cache


def rollback(cache: DynamicCache, drop: int) -> None:
    """Forget the last ``drop`` positions (0: nothing; sliding layers still trim what they recorded)."""
    cache.crop(-drop)
