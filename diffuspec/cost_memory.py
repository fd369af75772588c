"""What an engine measured of the machine, kept across processes: the cost-aware length policy's curves.

An engine times verification passes of the sizes it may choose before its first request, then follows every
curve online. A fresh process would time them again (a few seconds on a CPU, before the first token); instead the
curves are saved after each request under ``cache_root()/costs``, keyed by everything that sets them (the target's
architecture, dtype and kernels, the drafter's, the device, the thread count, the torch version and the processor),
and a new engine with the same key starts from them. Nothing else about a request is kept.

``$DIFFUSPEC_COSTS`` names another folder for them (the tests point it at a temporary one), or with ``off`` turns
the memory off. A file that cannot be read is ignored with a warning: the engine then measures afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import math
import platform
import warnings
from pathlib import Path
from typing import Any

import torch

from .gguf import cache_root
from .length import CostCurve, MachineCosts


def _model_facts(model: Any) -> dict[str, Any]:
    if model is None:
        return {}
    config = getattr(model, "config", None)
    kernels = sorted({type(m).__name__ for m in model.modules()}) if isinstance(model, torch.nn.Module) else []
    return {"class": type(model).__name__, "config": config.to_dict() if config is not None else None,
            "dtype": str(getattr(model, "dtype", "")), "modules": kernels}


def costs_key(target: torch.nn.Module, drafter: Any, device: torch.device, *, ar_drafter: Any = None,
              precision: str | None = None) -> str:
    """A digest of what sets an engine's cost curves: the target's and drafters' architecture (config), dtype and
    kernels, the target's precision (``precision.py``), the device, the thread count, torch and the processor."""
    facts = {"target": _model_facts(target), "drafter": _model_facts(drafter), "device": str(device),
             "threads": torch.get_num_threads(), "torch": torch.__version__, "processor": _processor()}
    if ar_drafter is not None:
        facts["ar_drafter"] = _model_facts(ar_drafter)
    if precision is not None:
        facts["precision"] = precision
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def costs_dir() -> Path | None:
    """Where the curves are kept: ``$DIFFUSPEC_COSTS``, else ``cache_root()/costs``; None when that is ``off``."""
    chosen = os.environ.get("DIFFUSPEC_COSTS")
    if chosen and chosen.lower() == "off":
        return None
    return Path(chosen) if chosen else cache_root() / "costs"


def _file(key: str) -> Path | None:
    folder = costs_dir()
    return None if folder is None else folder / f"{key}.json"


def _curve(points: dict[str, float]) -> CostCurve:
    curve = CostCurve()
    curve.points = {int(size): float(seconds) for size, seconds in points.items()}
    if any(size < 0 or not math.isfinite(seconds) or seconds < 0 for size, seconds in curve.points.items()):
        raise ValueError("a size or a time out of range")
    return curve


def load_costs(key: str) -> MachineCosts | None:
    """The curves saved under ``key``, or None: none saved, the memory off, or a file that cannot be read (then
    with a warning; the engine measures afresh and overwrites it)."""
    file = _file(key)
    if file is None or not file.is_file():
        return None
    try:
        saved = json.loads(file.read_text())
        return MachineCosts(_curve(saved["verify"]), {k: _curve(v) for k, v in saved["draft"].items()},
                            {k: _curve(v) for k, v in saved["search"].items()}, _curve(saved["other"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        warnings.warn(f"diffuspec: ignoring the unreadable cost memory {file} ({type(error).__name__}: {error})",
                      stacklevel=2)
        return None


def measured_sizes(costs: MachineCosts) -> tuple:
    """Which sizes ``costs`` holds a time for (not the times): a request that adds one is worth saving."""
    def sizes(curves: dict[str, CostCurve]) -> tuple:
        return tuple(sorted((kind, tuple(sorted(curve.points))) for kind, curve in curves.items()))

    return (tuple(sorted(costs.verify.points)), sizes(costs.draft), sizes(costs.search),
            tuple(sorted(costs.other.points)))


def save_costs(key: str, costs: MachineCosts) -> None:
    """Write the curves under ``key`` (atomically; a failure to write only costs the next process a calibration)."""
    data = {"verify": costs.verify.points, "draft": {k: c.points for k, c in costs.draft.items()},
            "search": {k: c.points for k, c in costs.search.items()}, "other": costs.other.points}
    target = _file(key)
    if target is None:
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.part")
        partial.write_text(json.dumps(data))
        partial.replace(target)
    except OSError:
        pass
