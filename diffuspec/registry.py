"""Engines shared within a process: one per distinct (models, loading arguments, config), loaded on first use.
Framework wrappers ask here, so building a wrapper stays cheap and the weights are loaded once."""

from __future__ import annotations

import threading
from typing import Any

from .config import DiffuSpecConfig
from .engine import DiffuSpec

_SHARED: dict[tuple, DiffuSpec] = {}
_SHARED_LOCK = threading.Lock()


def shared_engine(
    target: str | None = None,
    drafter: str | None = None,
    *,
    ar_drafter: str | None = None,
    config: DiffuSpecConfig | None = None,
    **load: Any,
) -> DiffuSpec:
    """The engine of these models, loaded now if no caller has asked for it before. ``load`` holds
    ``from_pretrained``'s loading arguments (``LOAD_ARGUMENTS``)."""
    config = config or DiffuSpecConfig()
    key = (target, drafter, ar_drafter, config, repr(sorted(load.items())))  # repr: a device_map dict
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = DiffuSpec.from_pretrained(target, drafter, ar_drafter=ar_drafter, config=config, **load)
        return _SHARED[key]
