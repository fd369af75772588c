"""Float32 linears whose cost hardly grows with the rows of a verification pass: weights in oneDNN's layout.

A speculative step verifies 2..33 tokens in one pass, so every product of the target is a thin matrix (rows =
tokens) times a weight matrix that must stream from memory once per pass. ``torch.nn.functional.linear`` hands
that to MKL as ``x @ W.T``, and MKL's small-row kernels do not stream a transposed weight well: on the 2-core
AVX-512 machine measured, the Gemma 3 270M LM head (262,144 x 640) took 90 ms for 1 row and 195 ms for 2.
oneDNN's inner-product kernels on a weight reordered once into their blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``) read it once at any row count up to the point where arithmetic,
not memory, bounds them; blocks of fewer than ``MIN_ROWS`` rows are padded with zero rows because oneDNN's
1..3-row kernels streamed the same layout more slowly than its 4-row kernel (measured per shape in
docs/verification.md).

Each output row is still the dot products of its own input row with the weight rows, in float32: what a one-token
step computes changes only in the last bits of rounding (accumulation order), as between any two float kernels.
"""

from __future__ import annotations

import torch
from torch import nn

MIN_ROWS = 4  # blocks of fewer rows are padded to this many (oneDNN's 4-row kernel streamed the weight fastest)


def packed_linears_available() -> bool:
    """Whether this torch build can run ``PackedLinear`` (a CPU build with oneDNN)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def pad_rows(rows: torch.Tensor, minimum: int) -> torch.Tensor:
    """``rows`` [n, d] with zero rows appended up to ``minimum`` rows (itself when it has that many)."""
    if rows.shape[0] >= minimum:
        return rows
    padded = rows.new_zeros(minimum, rows.shape[1])
    padded[: rows.shape[0]] = rows
    return padded


class PackedLinear(nn.Module):
    """``nn.Linear``'s product (float32, CPU) on a weight held in oneDNN's blocked layout, for inference.

    ``weight`` stays reachable as an attribute only when ``keep_weight`` (the output embeddings, whose rows
    drafters read and which a tied embedding shares anyway); elsewhere the layout copy replaces it."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, keep_weight: bool = False) -> None:
        super().__init__()
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ValueError(f"PackedLinear takes a float32 CPU weight, got {weight.dtype} on {weight.device}")
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        self.bias = bias
        self.weight = weight if keep_weight else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, keep_weight: bool = False) -> PackedLinear:
        return cls(linear.weight, linear.bias, keep_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        n = rows.shape[0]
        out = torch.ops.mkldnn._linear_pointwise(pad_rows(rows.contiguous(), MIN_ROWS), self.packed, self.bias,
                                                 "none", [], "")
        return out[:n].reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
