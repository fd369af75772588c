"""Int8 linears whose every output row is a function of its own input row alone, bit for bit ("row-exact").

A quantised target stays lossless under speculative decoding only if verifying k tokens in one pass gives each
token the logits a one-token step would: the speculative output must equal the quantised model's own greedy
``generate``. Dynamic int8 kernels (``torch.ao.quantization.quantize_dynamic``) break that: they scale a whole
call's activations by the block's largest value, so a token's result depends on which tokens share the pass.
Here every factor that enters a row's result is the row's own:

- weights: int8, symmetric, one scale per output channel (``max |w| / 127``), fixed once;
- activations: each row quantised by itself, ``s_r = max |x_r| / L`` and ``q_r = round(x_r / s_r)`` in
  ``[-L, L]`` (L = ``activation_levels()``);
- product: ``q_r . Q_c`` accumulated in int32 by fbgemm, which is exact (integer sums have no rounding, so the
  block size, blocking and order of accumulation cannot change them), then ``y_rc = acc_rc * w_c * s_r`` in
  float32, two elementwise products.

fbgemm takes the integers as float input with a fixed quantisation (scale 1, zero point ``ZERO_POINT``), which
maps each integer to itself plus the zero point, so no information is lost on the way in. Whether its kernels
accumulate 8-bit activations without 16-bit saturation (VNNI's ``vpdpbusd`` does; AVX2's ``vpmaddubsw`` pairs
can saturate) is probed once on a worst-case input: where they would saturate, activations use 7 bits, which
cannot.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

ZERO_POINT = 128  # fbgemm's activation zero point: integers in [-127, 127] map to bytes in [1, 255]
WIDE, NARROW = 127, 63  # activation levels: 8 bits, or 7 where the kernel's 16-bit pair sums could saturate


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: (q [out, in] int8, scale [out] float32) with weight ~ q * scale[:, None].
    An all-zero channel gets scale 1 (its q is 0 either way)."""
    absmax = weight.detach().abs().amax(dim=1).float()
    scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))
    q = torch.round(weight.detach().float() / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_rows(rows: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row quantised by its own scale: (q [n, d] float32 holding integers in [-levels, levels],
    scale [n, 1]) with rows ~ q * scale. A zero row gets scale 1 (its q is 0 either way)."""
    absmax = rows.abs().amax(dim=1, keepdim=True)
    scale = torch.where(absmax > 0, absmax / levels, torch.ones_like(absmax))
    return torch.round(rows / scale).clamp_(-levels, levels), scale


def _pack(q: torch.Tensor, scale: torch.Tensor):
    """fbgemm's packed form of an int8 weight with per-channel scales."""
    with warnings.catch_warnings():  # quantized tensors are deprecated, but fbgemm's prepack still takes one
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        per_channel = torch._make_per_channel_quantized_tensor(
            q, scale.double(), torch.zeros(q.shape[0], dtype=torch.long), 0)
    return torch.ops.quantized.linear_prepack(per_channel, None)


def _integer_product(q_rows: torch.Tensor, packed) -> torch.Tensor:
    """``q_rows @ Q.T * weight_scale`` with exact int32 accumulation (fbgemm, float32 out)."""
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(q_rows, 1.0, ZERO_POINT, packed)


def int8_kernels_available() -> bool:
    """Whether this torch build has fbgemm's quantised linear kernels (x86 CPU builds do)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(
        torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32")


@functools.cache
def activation_levels() -> int:
    """127 where fbgemm's int8 kernels accumulate this CPU's worst case exactly, else 63 (7 bits: every 16-bit
    pair sum of u8 x s8 products then stays below 2**15). The probe: all activations and weights at the
    extremes that make the pair sums largest, checked against the exact integer result."""
    width = 64
    weight = torch.full((8, width), -127, dtype=torch.int8)
    weight[1::2] = 127
    q = torch.full((4, width), float(WIDE))
    q[1::2] = -WIDE
    exact = q.double() @ weight.double().t()
    got = _integer_product(q, _pack(weight, torch.ones(8)))
    return WIDE if torch.equal(got.double(), exact) else NARROW


class RowExactInt8Linear(nn.Module):
    """``nn.Linear`` with int8 weights and per-row int8 activations, row-exact (see the module docstring).

    ``weight`` (the float original) stays reachable as an attribute only when ``keep_weight`` (the output
    embeddings, whose rows drafters read and which a tied embedding shares anyway)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, keep_weight: bool = False) -> None:
        super().__init__()
        if weight.device.type != "cpu":
            raise ValueError(f"RowExactInt8Linear runs on the CPU, got a weight on {weight.device}")
        self.out_features, self.in_features = weight.shape
        self.levels = activation_levels()
        q, weight_scale = quantize_weight(weight)
        self.packed = _pack(q, weight_scale)
        self.bias = bias  # added after the row scale (fbgemm would add it before)
        self.weight = weight if keep_weight else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, keep_weight: bool = False) -> RowExactInt8Linear:
        return cls(linear.weight, linear.bias, keep_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = quantize_rows(x.reshape(-1, self.in_features).float(), self.levels)
        out = _integer_product(q, self.packed) * scale
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation_levels={self.levels}"
