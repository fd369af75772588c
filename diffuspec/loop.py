"""The speculative loop: propose, verify, commit, report. One short step for every mode and proposer.

A request's decoding state is a ``DecodeState``; ``step(state)`` is one turn of the loop and returns its
``StepEvent``. Nothing is held in a generator frame, so a scheduler can start, interleave and cancel requests
between steps (and, later, verify several requests' drafts in one target pass).

The target's KV cache holds every committed token but the last, which is fed first in the next verification
pass together with the draft; the rejected tail is rolled back (a proposal that carries a token tree is verified
and compacted by ``tree.py`` instead). Committed ids live in one preallocated buffer
(no concatenation per step); the only host synchronisation per step is the acceptance decision.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from .caches import cache_kwargs, new_cache, rollback
from .events import Emitter, StepEvent
from .length import MachineCosts
from .proposers import Outcome, Proposer
from .tree import verify_tree
from .verification import SamplingParams, greedy_accept, gumbel_accept, position_gumbel, sample_accept

CALIBRATION_SIZES = (1, 2, 3, 5, 9, 17, 33)  # verified tokens timed once per engine (the cost curve's knots)


def _verify(target: PreTrainedModel, cache, feed: torch.Tensor, hidden_layers: tuple[int, ...] = (),
            **options: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits [len(feed), V] and, when ``hidden_layers`` are asked for, the hidden states at those layers
    concatenated ([len(feed), len(hidden_layers) * hidden]; None otherwise). ``options`` go to the forward."""
    if not hidden_layers:
        return target(input_ids=feed[None], use_cache=True, **cache_kwargs(target, cache), **options).logits[0], None
    out = target(input_ids=feed[None], use_cache=True, output_hidden_states=list(hidden_layers),
                 **cache_kwargs(target, cache), **options)
    return out.logits[0], torch.cat([out.hidden_states[i][0] for i in hidden_layers], dim=-1)


@functools.cache
def _prefill_options(forward_owner: type) -> dict:
    """The prefill's logits are never read: only the last position's is computed where the model allows (with a
    262k-token head, the whole prompt's logits cost more than the rest of the pass)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(forward_owner.forward).parameters else {}


def calibrate_verification(target: PreTrainedModel, cache, last: torch.Tensor, costs: MachineCosts,
                           clock: Callable[[], float], largest: int, repeats: int = 3) -> None:
    """Time verification passes of the sizes the policy may choose, on the request's own cache (rolled back
    after each): the curve is far from linear on a CPU (the second token costs the most), so it is measured."""
    for size in (s for s in CALIBRATION_SIZES if s <= largest):
        feed = last.repeat(size)
        for _ in range(repeats):
            start = clock()
            _verify(target, cache, feed)
            costs.verify.observe(size, clock() - start)
            rollback(cache, size)


@dataclass(eq=False)
class DecodeState:
    """One request's speculative decoding between two steps. Built without touching the models (``start``);
    its first ``step`` prefills the cache. ``ids[:n]`` are the prompt and the committed tokens."""

    target: PreTrainedModel
    proposer: Proposer
    emitter: Emitter
    sampling: SamplingParams
    seed: int
    generator: torch.Generator | None
    costs: MachineCosts  # the engine's, shared across requests: what it measured of the machine
    clock: Callable[[], float]
    calibrate_up_to: int  # 0: no calibration; else the largest verification to time before the first step
    ids: torch.Tensor
    n: int
    cache: Any = None  # None until prefilled
    finished: bool = field(default=False)

    @classmethod
    def start(cls, target: PreTrainedModel, prompt_ids: list[int], proposer: Proposer, emitter: Emitter,
              sampling: SamplingParams, seed: int, generator: torch.Generator | None, costs: MachineCosts,
              clock: Callable[[], float], calibrate_up_to: int = 0) -> DecodeState:
        ids = torch.empty(len(prompt_ids) + emitter.room, dtype=torch.long, device=target.device)
        ids[: len(prompt_ids)] = torch.tensor(prompt_ids, dtype=torch.long)
        return cls(target, proposer, emitter, sampling, seed, generator, costs, clock, calibrate_up_to, ids,
                   len(prompt_ids))

    def step(self) -> StepEvent:  # as a scheduler's ``Decoding``
        return step(self)

    def close(self) -> None:
        """Free the request's caches (its proposer's and its KV cache): an abandoned request frees memory now."""
        self.finished = True
        self.cache = None
        self.proposer.close()


def prefill(state: DecodeState) -> None:
    """Fill the cache with the prompt but its last token (and calibrate the cost curve, once per engine)."""
    target, stats, n, layers = state.target, state.emitter.stats, state.n, state.proposer.hidden_layers
    state.cache = cache = new_cache(target)
    start = state.clock()
    if n > 1:  # the cache holds all committed tokens but the last
        _, hidden = _verify(target, cache, state.ids[: n - 1], layers, **_prefill_options(type(target)))
        if layers:
            state.proposer.observe_hidden_states(hidden)
        rollback(cache, 0)  # sliding layers keep only their window of the prompt
        stats.counts["target_forwards"] += 1
    if state.calibrate_up_to and not state.costs.verify.points:
        calibrate_verification(target, cache, state.ids[n - 1 : n], state.costs, state.clock, state.calibrate_up_to)
    stats.seconds["verify"] += state.clock() - start


def step(state: DecodeState) -> StepEvent:
    """One turn of the loop (prefilling first if the request has not started): propose, verify, commit."""
    if state.cache is None:
        prefill(state)
    target, cache, proposer, emitter, sampling = state.target, state.cache, state.proposer, state.emitter, state.sampling
    ids, n, clock, stats = state.ids, state.n, state.clock, emitter.stats
    t0 = clock()
    proposal = proposer.propose(ids[:n], emitter.room - 1)
    draft, tree, rank = proposal.tokens, proposal.tree, 0
    d = verified = draft.numel()
    t1 = clock()
    if tree is not None:  # several paths in one pass (tree.py)
        verdict = verify_tree(target, cache, ids[n - 1 : n], tree, sampling, state.seed, emitter.generated)
        draft, next_token, rank = tree.tokens[verdict.accepted_nodes], verdict.next_token, verdict.rank
        accepted, d = draft.numel(), tree.depth
    else:
        logits, hidden = _verify(target, cache, torch.cat([ids[n - 1 : n], draft]), proposer.hidden_layers)
        if sampling.greedy:
            accepted, next_token = greedy_accept(draft, logits)
        elif proposal.probs is None:  # a deterministic draft: Gumbel-max verification (verification.py)
            noise = position_gumbel(state.seed, emitter.generated, d + 1, logits.shape[-1], target.device)
            accepted, next_token = gumbel_accept(draft, sampling.probs(logits), noise)
        else:
            accepted, next_token = sample_accept(draft, proposal.probs, sampling.probs(logits), state.generator)
        rollback(cache, d - accepted)
        if proposer.hidden_layers:  # the positions the cache kept: the last committed token and the accepted drafts
            proposer.observe_hidden_states(hidden[: accepted + 1])
    t2 = clock()

    tokens, finish = emitter.commit([*draft[:accepted].tolist(), next_token])
    ids[n : n + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    state.n = n + len(tokens)
    proposer.observe(Outcome(accepted, next_token, tokens, rank))
    state.costs.verify.observe(verified + 1, t2 - t1)
    stats.seconds["draft"] += proposal.draft_seconds
    stats.seconds["path_search"] += proposal.search_seconds
    stats.seconds["verify"] += t2 - t1
    stats.step(d, accepted, len(tokens), drafter_forwards=proposal.forwards, predicted=proposal.predicted_tokens,
               accepted_rank=rank, tree_size=verified)
    t3 = clock()
    other = (t1 - t0 - proposal.draft_seconds - proposal.search_seconds) + (t3 - t2)
    stats.seconds["other"] += other
    state.costs.other.observe(d, other)
    state.finished = finish is not None
    return emitter.event(tokens, d, accepted, finish)
