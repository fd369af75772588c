"""Engine configuration: every knob, its default and why."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from .errors import DiffuSpecError  # also importable from here, its former home

if TYPE_CHECKING:
    from .dlm import DLMSettings

MODES = ("diffuspec", "ar", "ar-drafter", "prompt-lookup", "dlm", "spiffy")
DLM_MODES = ("dlm", "spiffy")  # the diffusion model decoded on its own (no AR target involved)
DRAFT_SAMPLING = ("point-mass", "proposal")
LENGTH_POLICIES = ("cost", "adl")


@dataclass(frozen=True)
class DiffuSpecConfig:
    """Knobs of the speculative loop.

    The paper's ADL values (k in [20, 30], delta 10) suit a 7B drafter on a 32B target; the defaults here suit
    the small embedded pair. ADL's length EMA starts at 0, so with no EOS in the drafts k settles near
    k_max / 2 (16 here) and grows by delta only while drafts are accepted whole.
    """

    mode: str = "diffuspec"  # "diffuspec" | "ar" (target alone) | "ar-drafter" | "prompt-lookup" | "dlm" | "spiffy"
    draft_length: int | None = None  # a fixed k; None lets the length policy choose
    # "cost": the k (and whether CPS runs) that maximise expected tokens per second on the running machine;
    # "adl": the paper's adaptive draft length (ignores cost).
    length_policy: str = "cost"
    k_min: int = 1
    k_max: int = 32
    adl_delta: float = 8.0
    adl_rho: float = 0.5
    cps: bool = True  # False: per-position argmax path
    cps_beam_width: int = 3
    cps_tau: float = 0.8
    cps_max_candidates: int = 15
    # Tree verification (tree.py): the drafter's runners-up (best-first by the product of their marginals) added
    # to the draft path as a token tree, verified in the same target pass. draft_paths: the most root-to-leaf
    # paths the tree may hold (1: a single path, no tree). tree_branches: the most nodes added to the draft path
    # (None: as many as draft_paths full-depth paths need, (draft_paths - 1) x the step's draft length). With
    # the cost policy these are the most it may use: it takes a node only while its expected tokens pay for its
    # verification time.
    draft_paths: int = 1
    tree_branches: int | None = None
    # Weight of the drafter against the causal proxy; None: the paper's 0.5 when the drafter ships a corpus
    # n-gram table (the paper's KenLM role), else 0.9, because a proxy that only learns from the prompt and
    # output so far deserves less say (on the demo pair, online proxy only, lambda 0.5 / 0.7 / 0.9 / 1.0
    # gave MAT 2.38 / 2.99 / 3.30 / 3.10).
    cps_lambda: float | None = None
    ngram_order: int = 3  # the online n-gram proxy, learnt from prompt + output
    # Weight w of the corpus n-gram in the proxy, p = (1 - w) p_online + w p_corpus (no table: unused).
    cps_corpus_weight: float = 0.8
    denoising_steps: int = 1  # S; the paper found S = 1 fastest
    logits_shift: bool | None = None  # Dream-style shifted drafter logits; None: True for model_type "dream"
    drafter_prefix_cache: bool = True  # reuse the drafter's context KV (approximate, lossless anyway)
    # At temperature > 0: "point-mass" verifies the deterministic CPS/argmax path with p(x) acceptance;
    # "proposal" samples the draft from the drafter's marginals and applies the Leviathan min(1, p/q) rule.
    draft_sampling: str = "point-mass"
    prompt_lookup_max_ngram: int = 3
    # Mode "diffuspec": draft by prompt lookup where the context's last n-gram occurred before, and with the
    # diffusion drafter elsewhere (each with its own length policy).
    prompt_lookup_first: bool = True
    # Modes "dlm" and "spiffy" (the diffusion model decoded on its own): block length, steps per block,
    # prefix cache and Spiffy's draft graph; None: DLMSettings() defaults.
    dlm: DLMSettings | None = None

    def __post_init__(self) -> None:
        from .dlm import DLMSettings

        if self.dlm is not None and not isinstance(self.dlm, DLMSettings):
            raise DiffuSpecError(f"dlm must be a diffuspec.dlm.DLMSettings or None, got {self.dlm!r}")
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise DiffuSpecError(message)

        for f in fields(self):  # types first: True is no count, "no" no switch, "0.9" no number
            value, allowed = getattr(self, f.name), str(f.type).replace(" ", "").split("|")
            if not set(allowed) <= {"bool", "int", "float", "str", "None"}:
                continue  # a nested settings object validates itself
            ok = (value is None and "None" in allowed) or any(
                (kind == "bool" and isinstance(value, bool))
                or (kind == "int" and isinstance(value, numbers.Integral) and not isinstance(value, bool))
                or (kind == "float" and isinstance(value, numbers.Real) and not isinstance(value, bool))
                or (kind == "str" and isinstance(value, str))
                for kind in allowed
            )
            need(ok, f"DiffuSpecConfig.{f.name} must be {' or '.join(allowed)}, got {value!r}")
            if isinstance(value, numbers.Real) and not isinstance(value, bool):  # numpy numbers -> plain ones
                object.__setattr__(self, f.name, int(value) if "int" in allowed else float(value))

        need(isinstance(self.mode, str) and self.mode in MODES, f"mode {self.mode!r} is unknown: use one of {', '.join(MODES)}")
        need(
            self.length_policy in LENGTH_POLICIES,
            f"length_policy {self.length_policy!r} is unknown: use one of {', '.join(LENGTH_POLICIES)}",
        )
        need(
            self.draft_sampling in DRAFT_SAMPLING,
            f"draft_sampling {self.draft_sampling!r} is unknown: use one of {', '.join(DRAFT_SAMPLING)}",
        )
        need(1 <= self.k_min <= self.k_max, f"need 1 <= k_min <= k_max, got k_min={self.k_min}, k_max={self.k_max}")
        need(self.draft_length is None or self.draft_length >= 1, "draft_length must be >= 1 (or None for ADL)")
        need(0.0 < self.adl_rho <= 1.0, f"adl_rho must be in (0, 1], got {self.adl_rho}")
        need(0.0 < self.cps_tau <= 1.0, f"cps_tau must be in (0, 1], got {self.cps_tau}")
        need(
            self.cps_lambda is None or 0.0 <= self.cps_lambda <= 1.0,
            f"cps_lambda must be in [0, 1] (or None), got {self.cps_lambda}",
        )
        need(0.0 <= self.cps_corpus_weight <= 1.0, f"cps_corpus_weight must be in [0, 1], got {self.cps_corpus_weight}")
        need(self.cps_beam_width >= 1 and self.cps_max_candidates >= 1, "CPS beam width and candidates must be >= 1")
        need(self.draft_paths >= 1, f"draft_paths must be >= 1 (1: a single path), got {self.draft_paths}")
        need(
            self.tree_branches is None or self.tree_branches >= 1,
            f"tree_branches must be >= 1 (or None: as many as draft_paths full paths need), got {self.tree_branches}",
        )
        need(
            self.tree_branches is None or self.draft_paths > 1,
            f"tree_branches={self.tree_branches} sizes a tree, but draft_paths=1 verifies a single path: set "
            "draft_paths > 1 (e.g. draft_paths=4) to verify a tree, or leave tree_branches=None",
        )
        need(self.denoising_steps >= 1, f"denoising_steps must be >= 1, got {self.denoising_steps}")
        need(
            self.draft_sampling != "proposal" or self.denoising_steps == 1,
            "draft_sampling='proposal' needs denoising_steps=1: after several unmasking passes a position's "
            "distribution depends on later positions, so the Leviathan rule would not be exact. "
            "Use draft_sampling='point-mass' instead.",
        )
