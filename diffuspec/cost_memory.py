"""What an engine measured of the machine, kept across processes: the cost-aware length policy's curves.

An engine times verification passes of the sizes it may choose before its first request, then follows every
curve online. A fresh process would time them again (a few seconds on a CPU, before the first token); instead the
curves are saved after each request under ``cache_root()/costs``, keyed by everything that sets them (the target's
architecture, dtype and kernels, the drafter's, the device, the thread count, the torch version and the processor),
and a new engine with the same key starts from them. Nothing else about a request is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
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


def costs_key(target: torch.nn.Module, drafter: Any, device: torch.device) -> str:
    """A digest of what sets an engine's cost curves."""
    facts = {"target": _model_facts(target), "drafter": _model_facts(drafter), "device": str(device),
             "threads": torch.get_num_threads(), "torch": torch.__version__, "processor": _processor()}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _file(key: str) -> Path:
    return cache_root() / "costs" / f"{key}.json"


def _curve(points: dict[str, float]) -> CostCurve:
    curve = CostCurve()
    curve.points = {int(size): float(seconds) for size, seconds in points.items()}
    return curve


def load_costs(key: str) -> MachineCosts | None:
    """The curves saved under ``key``, or None (none saved, or a file that cannot be read)."""
    try:
        saved = json.loads(_file(key).read_text())
        return MachineCosts(_curve(saved["verify"]), {k: _curve(v) for k, v in saved["draft"].items()},
                            {k: _curve(v) for k, v in saved["search"].items()}, _curve(saved["other"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save_costs(key: str, costs: MachineCosts) -> None:
    """Write the curves under ``key`` (atomically; a failure to write only costs the next process a calibration)."""
    data = {"verify": costs.verify.points, "draft": {k: c.points for k, c in costs.draft.items()},
            "search": {k: c.points for k, c in costs.search.items()}, "other": costs.other.points}
    target = _file(key)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.part")
        partial.write_text(json.dumps(data))
        partial.replace(target)
    except OSError:
        pass
