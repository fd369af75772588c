"""Draft-length policies: how many tokens to draft next (and whether path search is worth its cost).

``adl``, the paper's rule (DiffuSpec section 1). Two EMAs follow how much the drafter produced before EOS (G)
and how much of it the target accepted (A); the next draft is about as long as the drafter has been writing,
plus ``delta`` when acceptance keeps up:

    G_t = (1 - rho) G_{t-1} + rho * L_gen        A_t = (1 - rho) A_{t-1} + rho * L_acc
    k_{t+1} = clip(G_t + delta * [A_t >= G_t], k_min, k_max),   k_1 = k_max

``cost`` (the default) maximises expected tokens per second instead. With alpha_i the probability that draft
token i is accepted given tokens 0..i-1 were, a draft of k tokens commits on average

    E(k) = 1 + sum_{j=1..k} prod_{i<j} alpha_i          (the accepted prefix plus the target's own token)

and a step costs T(k) = draft(k) + search(k) + verify(k + 1) + other, each measured on the running machine
(verification calibrated once per engine, then every term followed online). The policy drafts the k in
[k_min, k_max] with the largest E(k) / T(k), or nothing (a plain one-token step, E = 1, T = verify(1) + other)
when that earns more, drafting again every ``probe_every`` steps to follow the acceptance. Under greedy
decoding it also compares the path-search path with the drafter's argmax path (whose acceptance is known for
free from every verification: see ``argmax_match``) and searches only while that pays. ADL ignores cost, which is why it over-drafts on a CPU
where each verified token costs time.

With ``draft_paths`` > 1 (``tree.py``) the policy also sizes the token tree, after drafting, once the
drafter's marginals are known: of the branch nodes ``grow_tree`` offers within the limits (``draft_paths``
paths, ``tree_branches`` nodes), node j (best first) is expected to add c * v_j accepted tokens, v_j its
value, and adding the first m of them costs verify(k + 1 + m) - verify(k + 1), so it takes the m with the most
expected tokens per second (m = 0: the single path, so a tree is never chosen where it does not pay). c
calibrates the drafter's values: realised over predicted extra tokens of past tree steps (decayed, prior 1),
where the realised gain is exact: the single path's acceptance is read off every tree step (the committed
tokens are the target's, whichever branch carried them).
"""

from __future__ import annotations

import bisect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from .tree import SINGLE_PATH, TreeLimits

# ----- ADL (the paper's rule) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ADLState:
    k: int  # the length of the next draft
    generated_ema: float = 0.0  # G
    accepted_ema: float = 0.0  # A


def generated_length(raw_draft: Sequence[int], k: int, eos_token_ids: set[int] | frozenset[int]) -> int:
    """L_gen = min(s - 1, k), s the 1-based index of the first EOS in the raw drafter output."""
    for i, token in enumerate(raw_draft):
        if token in eos_token_ids:
            return min(i, k)
    return k


def adl_update(
    state: ADLState, generated: int, accepted: int, *, k_min: int, k_max: int, delta: float, rho: float
) -> ADLState:
    """One ADL step: fold in this step's L_gen and L_acc and size the next draft (rounded to a token)."""
    g = (1.0 - rho) * state.generated_ema + rho * generated
    a = (1.0 - rho) * state.accepted_ema + rho * accepted
    k = g + delta * (a >= g)
    return ADLState(k=int(min(max(round(k), k_min), k_max)), generated_ema=g, accepted_ema=a)


# ----- the cost model --------------------------------------------------------------------------------------


def expected_tokens(alphas: Sequence[float], k: int) -> float:
    """E(k) = 1 + sum_{j=1..k} prod_{i<j} alpha_i: tokens a step commits when it drafts k tokens."""
    return expected_tokens_table(alphas, k)[k]


def expected_tokens_table(alphas: Sequence[float], k_max: int) -> list[float]:
    """[E(0), E(1), ..., E(k_max)] in one pass (alphas beyond their length count as 0)."""
    table, reach = [1.0], 1.0
    for k in range(k_max):
        reach *= alphas[k] if k < len(alphas) else 0.0
        table.append(table[-1] + reach)
    return table


def best_draft_length(
    alphas: Sequence[float], step_seconds: Sequence[float], k_min: int, k_max: int
) -> tuple[int, float]:
    """The k in [k_min, k_max] with the most expected tokens per second, and E(k); ``step_seconds[k]`` is the
    time of a step that drafts k tokens."""
    tokens = expected_tokens_table(alphas, k_max)
    best = max(range(k_min, k_max + 1), key=lambda k: tokens[k] / max(step_seconds[k], 1e-12))
    return best, tokens[best]


def argmax_match(argmax_path: Sequence[int], verified_path: Sequence[int], accepted: int, next_token: int) -> int:
    """How much of the drafter's argmax path greedy verification would have accepted, read off a step that
    verified another path: the target's tokens at positions 0..accepted are known (the accepted prefix, then
    ``next_token``), and while the argmax path agrees with them its context is the verified one. Beyond them the
    answer is censored: ``accepted + 1`` means "at least that many"."""
    target = [*verified_path[:accepted], next_token]
    match = 0
    while match < min(len(argmax_path), len(target)) and argmax_path[match] == target[match]:
        match += 1
    return match


class AcceptanceEstimate:
    """Per-position conditional acceptance alpha_i, from decayed counts with a weak prior.

    A step that drafted d tokens and had m accepted tried positions 0..min(m, d - 1) and accepted 0..m-1; a
    censored observation (we only know the first ``tried`` positions) counts just those. Position 0 shrinks
    towards the pooled rate of all positions (itself shrunk towards ``prior``) and each later position towards
    the estimate of the one before it, so a position never drafted yet is expected to do as well as the deepest
    one that was. Conditional acceptance rises with depth (a drafter that got this far is in step with the
    target), so the pooled rate, dominated by the shallow positions every step tries, would make the positions
    beyond the current draft look worse than they are and keep the policy from ever drafting longer.
    """

    def __init__(self, length: int, prior: float = 0.5, prior_weight: float = 2.0, decay: float = 0.95) -> None:
        self.tried = [0.0] * length
        self.accepted = [0.0] * length
        self.prior, self.prior_weight, self.decay = prior, prior_weight, decay

    def copy(self) -> AcceptanceEstimate:
        twin = AcceptanceEstimate(len(self.tried), self.prior, self.prior_weight, self.decay)
        twin.tried, twin.accepted = list(self.tried), list(self.accepted)
        return twin

    @property
    def known(self) -> bool:
        """Whether anything has been observed."""
        return any(self.tried)

    def observe(self, accepted: int, tried: int) -> None:
        for i in range(len(self.tried)):
            self.tried[i] *= self.decay
            self.accepted[i] *= self.decay
        for i in range(min(tried, len(self.tried))):
            self.tried[i] += 1.0
            self.accepted[i] += i < accepted

    def alphas(self) -> list[float]:
        w = self.prior_weight
        anchor = (sum(self.accepted) + w * self.prior) / (sum(self.tried) + w)  # pooled, shrunk to the prior
        alphas = []
        for a, t in zip(self.accepted, self.tried):
            anchor = (a + w * anchor) / (t + w)
            alphas.append(anchor)
        return alphas


class CostCurve:
    """Seconds as a function of a size (tokens drafted or verified): an EMA per measured size, made
    non-decreasing in size (pool-adjacent-violators: a busy machine's noise must not make a longer pass look
    cheaper than a shorter one), read between sizes by linear interpolation and beyond them by the nearest
    segment's slope (flat when one size is known)."""

    def __init__(self, smoothing: float = 0.2) -> None:
        self.points: dict[int, float] = {}
        self.smoothing = smoothing

    def observe(self, size: int, seconds: float) -> None:
        old = self.points.get(size)
        self.points[size] = seconds if old is None else (1 - self.smoothing) * old + self.smoothing * seconds

    def table(self, largest: int) -> list[float]:
        """[cost(0), ..., cost(largest)]."""
        xs, ys = self._fitted()
        return [_read(size, xs, ys) for size in range(largest + 1)]

    def __call__(self, size: int) -> float:
        return _read(size, *self._fitted())

    def _fitted(self) -> tuple[list[int], list[float]]:
        xs = sorted(self.points)
        blocks: list[list[float]] = []  # [sum, count] of pooled neighbours
        for x in xs:
            blocks.append([self.points[x], 1])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
                total, count = blocks.pop()
                blocks[-1][0] += total
                blocks[-1][1] += count
        return xs, [total / count for total, count in blocks for _ in range(int(count))]


def _read(size: int, xs: list[int], ys: list[float]) -> float:
    if not xs:
        return 0.0
    if len(xs) == 1:
        return ys[0]
    i = min(max(bisect.bisect(xs, size), 1), len(xs) - 1)  # the knots (xs[i-1], xs[i]) around or nearest
    slope = (ys[i] - ys[i - 1]) / (xs[i] - xs[i - 1])
    return max(0.0, ys[i - 1] + slope * (size - xs[i - 1]))


@dataclass
class MachineCosts:
    """What one engine has measured of the running machine: shared by its requests (a property of the machine
    and models, not of a request). ``verify`` by tokens verified; ``draft`` and ``search`` by draft length, per
    proposer kind; ``other`` the loop's own time per step."""

    verify: CostCurve
    draft: dict[str, CostCurve]
    search: dict[str, CostCurve]
    other: CostCurve

    @classmethod
    def empty(cls) -> MachineCosts:
        return cls(CostCurve(), {}, {}, CostCurve())

    def drafting(self, kind: str) -> tuple[CostCurve, CostCurve]:
        return self.draft.setdefault(kind, CostCurve()), self.search.setdefault(kind, CostCurve())


@dataclass(frozen=True)
class LengthChoice:
    k: int
    search: bool  # run path search this step (else the argmax path)
    tree_limits: TreeLimits = SINGLE_PATH  # how large a token tree around the draft path may grow
    predicted_tokens: float = math.nan  # E(k) under the policy's model; NaN when it makes none


@dataclass(frozen=True)
class StepFeedback:
    """What a verified step tells a length policy."""

    drafted: int
    accepted: int
    generated: int  # L_gen: raw drafter tokens before its first EOS (ADL)
    argmax_match: int | None = None  # counterfactual acceptance of the argmax path (greedy, when searched)
    draft_seconds: float = 0.0
    search_seconds: float = 0.0
    tree_size: int = 0  # tokens in the verified tree; 0: a single path
    best_path_match: int | None = None  # on a tree step, how much of the best path alone was accepted


class LengthPolicy(ABC):
    """Per-request state of one policy; ``choose`` sizes the next draft, ``observe`` folds in its outcome."""

    @abstractmethod
    def choose(self, room: int) -> LengthChoice:
        """The next draft's length (at most ``room``), whether to search, how large a tree at most."""

    def tree_branches(self, drafted: int, values: Sequence[float]) -> tuple[int, float]:
        """How many of the offered branch nodes (best first, with their values: ``tree.grow_tree``) to verify
        with a draft path of ``drafted`` tokens, and the tokens the step is then expected to commit (NaN: no
        prediction). Default: all of them."""
        return len(values), math.nan

    def observe(self, feedback: StepFeedback) -> None:
        """Default: nothing to learn."""


class FixedLength(LengthPolicy):
    def __init__(self, k: int, search: bool, tree_limits: TreeLimits = SINGLE_PATH) -> None:
        self.k, self.search, self.tree_limits = k, search, tree_limits

    def choose(self, room: int) -> LengthChoice:
        return LengthChoice(min(self.k, room), self.search, self.tree_limits)


class ADLPolicy(LengthPolicy):
    def __init__(self, *, k_min: int, k_max: int, delta: float, rho: float, search: bool,
                 tree_limits: TreeLimits = SINGLE_PATH) -> None:
        self.state = ADLState(k=k_max)
        self.params = {"k_min": k_min, "k_max": k_max, "delta": delta, "rho": rho}
        self.search, self.tree_limits = search, tree_limits

    def choose(self, room: int) -> LengthChoice:
        return LengthChoice(min(self.state.k, room), self.search, self.tree_limits)

    def observe(self, feedback: StepFeedback) -> None:
        if feedback.drafted:
            self.state = adl_update(self.state, feedback.generated, feedback.accepted, **self.params)


class RecentAcceptance:
    """What one drafter's recent steps on an engine saw (searched and argmax paths), across requests: a new
    request's cost policy starts from it instead of exploring with a full-length draft, which on a short answer
    costs more than the whole answer gains (the estimates' decay keeps about the last twenty steps)."""

    def __init__(self, k_max: int) -> None:
        self.searched, self.argmax = AcceptanceEstimate(k_max), AcceptanceEstimate(k_max)


class CostAwarePolicy(LengthPolicy):
    """Maximise expected tokens per second under the measured costs (module docstring).

    ``search`` is the configured path search (CPS on or off); ``adaptive_search`` lets the policy switch it off
    while the argmax path earns more per second (only under greedy decoding, where the argmax path's acceptance
    can be read off every verification). ``tree_limits`` lets it add branch nodes to the draft path as a token
    tree, up to those limits, where they earn more per second (module docstring).
    """

    def __init__(self, costs: MachineCosts, kind: str, *, k_min: int, k_max: int, search: bool,
                 adaptive_search: bool, probe_every: int = 8,
                 tree_limits: TreeLimits = SINGLE_PATH, recent: RecentAcceptance | None = None) -> None:
        self.costs, self.k_min, self.k_max = costs, k_min, k_max
        self.draft_cost, self.search_cost = costs.drafting(kind)
        self.search_on = search
        self.adaptive = search and adaptive_search
        # this request's estimates start from what the engine's earlier steps of this drafter saw, and feed it
        self.recent = recent if recent is not None else RecentAcceptance(k_max)
        self.searched, self.argmax = self.recent.searched.copy(), self.recent.argmax.copy()
        self.tree_limits = tree_limits
        self.branch_realised = self.branch_predicted = 1.0  # decayed extra tokens of tree steps; prior c = 1
        self.branch_decay = 0.95
        self.predicted_gain = 0.0  # the last tree's predicted extra tokens, c not applied
        self.probe_every, self.steps = probe_every, 0
        self.search = search  # this step's choice

    def _seconds(self, k_max: int, search: bool) -> list[float]:
        """Seconds of a step that drafts k tokens and verifies them as one path, for k = 0..k_max."""
        verify = self.costs.verify.table(k_max + 1)[1:]
        seconds = [a + b + c for a, b, c in zip(self.draft_cost.table(k_max), verify, self.costs.other.table(k_max))]
        if search:
            seconds = [t + s for t, s in zip(seconds, self.search_cost.table(k_max))]
        return seconds

    def _plan(self, alphas: Sequence[float], search: bool, k_max: int) -> tuple[int, float, float]:
        seconds = self._seconds(k_max, search)
        k, tokens = best_draft_length(alphas, seconds, min(self.k_min, k_max), k_max)
        return k, tokens, tokens / max(seconds[k], 1e-12)

    def _alphas(self, search: bool) -> list[float]:
        return (self.searched if search else self.argmax).alphas()

    def plain_step_rate(self) -> float:
        """Tokens per second of a step that drafts nothing: one token for a one-token verification."""
        return 1.0 / max(self.costs.verify(1) + self.costs.other(0), 1e-12)

    def choose(self, room: int) -> LengthChoice:
        self.steps += 1
        k_max = min(self.k_max, room)
        if not (self.searched.known or self.argmax.known) or not self.costs.verify.points:  # explore: a full draft
            self.search = self.search_on
            return LengthChoice(k_max, self.search_on, self.tree_limits)
        probe = self.steps % self.probe_every == 0
        plans = {False: self._plan(self._alphas(False), False, k_max)}
        if self.search_on:
            plans[True] = self._plan(self._alphas(True), True, k_max)
        search = self.search_on
        if self.adaptive:
            search = plans[True][2] >= plans[False][2] or probe
        k, tokens, rate = plans[search]
        self.search = search
        if rate < self.plain_step_rate() and not probe:  # no draft pays here: a plain step, drafting again to probe
            return LengthChoice(0, search, SINGLE_PATH, 1.0)
        return LengthChoice(k, search, self.tree_limits, tokens)

    def tree_branches(self, drafted: int, values: Sequence[float]) -> tuple[int, float]:
        path_tokens = expected_tokens(self._alphas(self.search), drafted)
        verify = self.costs.verify.table(drafted + 1 + len(values))
        others = self._seconds(drafted, self.search)[drafted] - verify[drafted + 1]  # drafting, search, the loop
        calibration = self.branch_realised / self.branch_predicted
        best, best_rate, gain, best_gain = 0, path_tokens / max(others + verify[drafted + 1], 1e-12), 0.0, 0.0
        for m, value in enumerate(values, start=1):
            gain += value
            rate = (path_tokens + calibration * gain) / max(others + verify[drafted + 1 + m], 1e-12)
            if rate > best_rate:
                best, best_rate, best_gain = m, rate, gain
        self.predicted_gain = best_gain
        return best, path_tokens + calibration * best_gain

    def observe(self, feedback: StepFeedback) -> None:
        d, a = feedback.drafted, feedback.accepted
        if d == 0:
            return
        self.draft_cost.observe(d, feedback.draft_seconds)
        path_accepted = a  # what the draft path alone accepted
        if feedback.tree_size and feedback.best_path_match is not None:  # exact: the branch left the path there
            path_accepted = feedback.best_path_match
            decay = self.branch_decay
            self.branch_realised = decay * self.branch_realised + a - path_accepted
            self.branch_predicted = decay * self.branch_predicted + self.predicted_gain
        if feedback.search_seconds:
            self.search_cost.observe(d, feedback.search_seconds)
            self._observe(True, path_accepted, min(path_accepted + 1, d))
            if feedback.argmax_match is not None:  # censored at what the target's tokens show (argmax_match)
                self._observe(False, feedback.argmax_match, min(feedback.argmax_match + 1, d, a + 1))
        else:
            self._observe(False, path_accepted, min(path_accepted + 1, d))

    def _observe(self, searched: bool, accepted: int, tried: int) -> None:
        for estimate in (self.searched, self.recent.searched) if searched else (self.argmax, self.recent.argmax):
            estimate.observe(accepted, tried)
