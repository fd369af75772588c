"""``prepare_target``: swap a CPU target's linears in place for kernels built for verification passes.

``precision="float32"`` keeps the model's arithmetic (float32 products on oneDNN's blocked weight layout,
``fast_linear.py``): a one-token step computes what it did, up to the last bits of float rounding, and a pass of
k tokens streams the weights about once. ``precision="int8"`` makes a quantised model (``row_exact_int8.py``):
int8 weights per output channel, each activation row quantised by itself, exact int32 accumulation, and
attention run query by query (``row_exact_attention.py``), so every token's logits are, bit for bit, those a
one-token step of the same quantised model computes, whichever tokens share the pass: speculative decoding on it
reproduces that quantised model's own ``generate``.

Every ``nn.Linear`` of the model is swapped (the LM head included; a tied input embedding keeps its float32
table and the head keeps it as ``weight``, where drafters read it). The prepared model is for inference on the
CPU: it cannot be trained, moved to another device or saved with ``save_pretrained``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel

from .config import DiffuSpecError
from .fast_linear import PackedLinear, packed_linears_available
from .row_exact_attention import use_row_exact_attention
from .row_exact_int8 import RowExactInt8Linear, int8_kernels_available

PRECISIONS = ("float32", "int8")
_MARK = "_diffuspec_precision"  # set on a prepared model: a second preparation must agree with the first

_KERNELS: dict[str, tuple[Callable[..., nn.Module], Callable[[], bool]]] = {
    "float32": (PackedLinear.from_linear, packed_linears_available),
    "int8": (RowExactInt8Linear.from_linear, int8_kernels_available),
}


def prepare_target(model: PreTrainedModel, precision: str | None = "float32") -> PreTrainedModel:
    """Swap every ``nn.Linear`` of ``model`` (a float32 model on the CPU) for ``precision``'s kernels, in place,
    and return it. ``None`` leaves the model as it is. Preparing a model twice with the same precision does
    nothing; with another, it is refused (the first swap cannot be undone)."""
    if precision is None:
        return model
    if precision not in PRECISIONS:
        raise DiffuSpecError(f"unknown precision {precision!r}: use one of {', '.join(map(repr, PRECISIONS))} "
                             "(or None to keep the model as loaded)")
    done = getattr(model, _MARK, None)
    if done == precision:
        return model
    if done is not None:
        raise DiffuSpecError(f"this model was already prepared with precision={done!r}, which cannot be undone: "
                             f"load it again to prepare it with precision={precision!r}")
    _check_preparable(model, precision)
    swap, _ = _KERNELS[precision]
    head = model.get_output_embeddings()
    with torch.no_grad():
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, swap(child, keep_weight=child is head))
    if precision == "int8":  # its rounding would amplify attention's last-bit block effects (row_exact_attention)
        use_row_exact_attention(model)
    setattr(model, _MARK, precision)
    return model


PRECISION_CHOICES = ("auto", "none", *PRECISIONS)  # the loading argument's values (``load_arguments.py``)


def checked_precision(precision: str | None) -> str:
    """The loading argument ``precision`` spelt as one of ``PRECISION_CHOICES`` (Python None: "none"), or a
    DiffuSpecError naming them."""
    if precision is None:
        return "none"
    if not isinstance(precision, str) or precision not in PRECISION_CHOICES:
        raise DiffuSpecError(f"unknown precision {precision!r}: use one of "
                             f"{', '.join(map(repr, PRECISION_CHOICES))} (None is 'none')")
    return precision


def check_precision_device(precision: str, device_type: str | None) -> None:
    """Refuse (before loading anything) an explicit CPU precision with a target that will not be on the CPU;
    ``device_type`` None: a device map places it, checked on the loaded weights instead."""
    if precision in PRECISIONS and device_type not in (None, "cpu"):
        raise DiffuSpecError(f"precision={precision!r} prepares the target for CPU kernels, but it loads on "
                             f"{device_type!r}: pass precision='auto' or 'none' there (or device='cpu')")


def resolved_precision(precision: str, model: PreTrainedModel, recommended: str | None) -> str | None:
    """What ``prepare_target`` is given for the loading argument ``precision`` (checked) on the loaded ``model``:
    "auto" is ``recommended`` (a preset's) where the target is a float32 model on the CPU and this torch build has
    the kernels, else None (as loaded); "none" is None; the others stand."""
    if precision == "none":
        return None
    if precision != "auto":
        return precision
    if recommended is None:
        return None
    weights = [m.weight for m in model.modules() if type(m) is nn.Linear]
    _, available = _KERNELS[recommended]
    on_cpu_float32 = bool(weights) and all(w.device.type == "cpu" and w.dtype == torch.float32 for w in weights)
    return recommended if on_cpu_float32 and available() else None


def target_precision(model: PreTrainedModel) -> str | None:
    """The precision ``prepare_target`` prepared ``model`` with (None: not prepared)."""
    return getattr(model, _MARK, None)


def _check_preparable(model: PreTrainedModel, precision: str) -> None:
    _, available = _KERNELS[precision]
    if not available():
        raise DiffuSpecError(f"precision={precision!r} needs torch's x86 CPU kernels (oneDNN for float32, fbgemm "
                             "for int8), which this torch build lacks: install the standard x86 CPU build of torch, "
                             "or pass precision=None")
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    if not linears:
        raise DiffuSpecError(f"precision={precision!r} swaps the model's nn.Linear layers, and "
                             f"{type(model).__name__} has none: pass precision=None for this model")
    devices = {str(m.weight.device) for m in linears}
    if devices != {"cpu"}:
        raise DiffuSpecError(f"precision={precision!r} prepares a target for CPU kernels, but its weights are on "
                             f"{', '.join(sorted(devices))}: load the target with device='cpu', or pass "
                             "precision=None on an accelerator")
    dtypes = {m.weight.dtype for m in linears}
    if dtypes != {torch.float32}:
        raise DiffuSpecError(f"precision={precision!r} starts from float32 weights, but the target's are "
                             f"{', '.join(sorted(map(str, dtypes)))}: load it with dtype=torch.float32")
