"""ADL, adaptive draft length (DiffuSpec, papers.md section 1).

Two EMAs follow how much the drafter produced before EOS (G) and how much of it the target accepted (A).
The next draft is about as long as the drafter has been writing, plus ``delta`` when acceptance keeps up:

    G_t = (1 - rho) G_{t-1} + rho * L_gen        A_t = (1 - rho) A_{t-1} + rho * L_acc
    k_{t+1} = clip(G_t + delta * [A_t >= G_t], k_min, k_max),   k_1 = k_max
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ADLState:
    k: int  # the length of the next draft
    generated_ema: float = 0.0  # G
    accepted_ema: float = 0.0  # A


def generated_length(raw_draft: Sequence[int], k: int, eos_token_ids: set[int]) -> int:
    """L_gen = min(s - 1, k), s the 1-based index of the first EOS in the raw drafter output."""
    for i, token in enumerate(raw_draft):
        if token in eos_token_ids:
            return min(i, k)
    return k


def adl_update(
    state: ADLState,
    generated: int,
    accepted: int,
    *,
    k_min: int,
    k_max: int,
    delta: float,
    rho: float,
) -> ADLState:
    """One ADL step: fold in this step's L_gen and L_acc and size the next draft (rounded to a token)."""
    g = (1.0 - rho) * state.generated_ema + rho * generated
    a = (1.0 - rho) * state.accepted_ema + rho * accepted
    k = g + delta * (a >= g)
    return ADLState(k=int(min(max(round(k), k_min), k_max)), generated_ema=g, accepted_ema=a)
