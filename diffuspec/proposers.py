"""Proposers: what the decoding loop asks for a draft (one interface, in the spirit of transformers'
``CandidateGenerator``), and the one implementation that composes a drafter with path search and a length
policy.

A proposer belongs to one request: it holds that request's state (the drafter's caches, the online n-gram
proxy, the length policy's estimates), so concurrent requests share nothing but the models.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .drafters import Drafter
from .length import LengthPolicy, StepFeedback, argmax_match, generated_length
from .path_search import NGramProxy, PathSearch
from .tree import TokenTree, build_tree, grow_tree
from .verification import SamplingParams


@dataclass(frozen=True)
class Proposal:
    tokens: torch.Tensor  # [d] draft tokens, on the target's device (a tree's nodes when ``tree`` is set)
    probs: torch.Tensor | None = None  # [d, V] the distributions ``tokens`` were sampled from; None: deterministic
    forwards: int = 0  # drafter forward passes spent
    draft_seconds: float = 0.0
    search_seconds: float = 0.0
    predicted_tokens: float = math.nan  # tokens the length policy expects this step to commit
    tree: TokenTree | None = None  # several paths to verify as one token tree (tree.py); None: a single path


@dataclass(frozen=True)
class Outcome:
    """What verification made of a proposal."""

    accepted: int  # draft tokens kept
    next_token: int  # the target's own token after them
    committed: Sequence[int]  # every token committed this step (the accepted prefix, then next_token; EOS-cut)
    rank: int = 0  # a tree's accepted branch is a prefix of path ``rank`` (best first)


class Proposer(ABC):
    # Target hidden-state layers the proposer needs for committed tokens (``Drafter.hidden_layers``); the loop
    # asks the target's passes for them only when this is not empty.
    hidden_layers: tuple[int, ...] = ()

    @abstractmethod
    def propose(self, context: torch.Tensor, room: int) -> Proposal:
        """A draft of at most ``room`` tokens after ``context`` ([n] committed token ids)."""

    def observe(self, outcome: Outcome) -> None:
        """Learn from the verification of the last proposal."""

    def observe_hidden_states(self, states: torch.Tensor) -> None:
        """The target's hidden states at ``hidden_layers`` for the next committed positions the target's cache
        took (``Drafter.observe_hidden_states``): the prompt but its last token after prefill, then per step the
        verified last token and the accepted draft tokens."""

    def close(self) -> None:
        """Free per-request resources (caches)."""


class TargetOnly(Proposer):
    """No draft: every step is one plain KV-cached target step (mode "ar", the reference)."""

    def propose(self, context: torch.Tensor, room: int) -> Proposal:
        return Proposal(context[:0])


def _fit_vocab(x: torch.Tensor, size: int, fill: float) -> torch.Tensor:
    """Drafter and target may pad their vocabularies differently: align the drafter's to the target's. Extra
    drafter ids (a mask token past the target's vocabulary) are dropped, so they are never proposed."""
    if x.shape[-1] >= size:
        return x[..., :size]
    return torch.nn.functional.pad(x, (0, size - x.shape[-1]), value=fill)


class DraftProposer(Proposer):
    """A drafter, the path through its lattice (CPS, argmax, or a sample for the Leviathan rule) and a length
    policy. Drafters that return finished tokens (an AR model, prompt lookup) skip the path choice."""

    def __init__(
        self,
        drafter: Drafter,
        policy: LengthPolicy,
        path_search: PathSearch,
        proxy: NGramProxy,
        *,
        vocab_size: int,
        eos_token_ids: frozenset[int],
        prompt_ids: Sequence[int],
        draft_sampling: SamplingParams | None,
        generator: torch.Generator | None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.drafter, self.policy, self.path_search, self.proxy = drafter, policy, path_search, proxy
        self.vocab_size, self.eos = vocab_size, eos_token_ids
        self.draft_sampling, self.generator, self.clock = draft_sampling, generator, clock
        self.history = list(prompt_ids)
        self.proxy.reset()
        self.proxy.extend(self.history)
        self.drafter.reset()
        self.hidden_layers = drafter.hidden_layers
        # paths, their tree (None: one path), argmax, L_gen, seconds of drafting and search
        self._last: tuple[list[list[int]], TokenTree | None, list[int] | None, int, float, float] | None = None

    def propose(self, context: torch.Tensor, room: int) -> Proposal:
        choice = self.policy.choose(room)
        if choice.k <= 0:
            self._last = None
            return Proposal(context[:0])
        t0 = self.clock()
        draft = self.drafter.propose(context, choice.k, self.draft_sampling, self.generator)
        t1 = self.clock()
        probs, argmax, tree, predicted = None, None, None, choice.predicted_tokens
        if draft.logprobs is None:  # a finished draft
            tokens, probs = draft.tokens[: choice.k], draft.probs
            paths = [tokens.tolist()]
            raw = paths[0]
        else:
            logprobs = _fit_vocab(draft.logprobs[: choice.k], self.vocab_size, float("-inf"))
            if self.draft_sampling is not None:
                probs = self.draft_sampling.probs(logprobs)
                tokens = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
                paths = [tokens.tolist()]
                raw = paths[0]
            else:
                argmax = logprobs.argmax(dim=-1).tolist()
                raw = argmax
                paths = [self.path_search(logprobs, self.history, self.proxy, self.eos) if choice.search else argmax]
                budget = choice.tree_limits.budget(len(paths[0]))
                if budget:  # the drafter's runners-up as a token tree around the path (tree.py)
                    grown = grow_tree(logprobs, paths[0], budget, paths=choice.tree_limits.paths, ends=self.eos)
                    branches, predicted = self.policy.tree_branches(len(paths[0]), grown.branch_values)
                    if branches:
                        paths = grown.paths(branches)
                        tree = build_tree(paths, context.device)
                tokens = tree.tokens if tree is not None else torch.tensor(paths[0], dtype=torch.long,
                                                                           device=context.device)
        if probs is not None:
            probs = _fit_vocab(probs[: tokens.numel()], self.vocab_size, 0.0)
        t2 = self.clock()
        searched = choice.search and argmax is not None
        self._last = (paths, tree, argmax if searched else None, generated_length(raw, choice.k, self.eos),
                      t1 - t0, t2 - t1 if searched else 0.0)
        return Proposal(tokens, probs, draft.forwards, t1 - t0, t2 - t1, predicted, tree)

    def observe_hidden_states(self, states: torch.Tensor) -> None:
        self.drafter.observe_hidden_states(states)

    def observe(self, outcome: Outcome) -> None:
        self.history += outcome.committed
        self.proxy.extend(outcome.committed)
        if self._last is None:
            return
        paths, tree, argmax, generated, draft_s, search_s = self._last
        self._last = None
        # what the target's tokens say of other paths, read off the one that carried the accepted branch
        verified, a, token = paths[outcome.rank], outcome.accepted, outcome.next_token
        match = argmax_match(argmax, verified, a, token) if argmax is not None else None
        if tree is None:
            feedback = StepFeedback(len(verified), a, generated, match, draft_s, search_s)
        else:
            feedback = StepFeedback(len(paths[0]), a, generated, match, draft_s, search_s, tree.size,
                                    argmax_match(paths[0], verified, a, token))
        self.policy.observe(feedback)

    def close(self) -> None:
        self.drafter.reset()


class LookupFirst(Proposer):
    """Prompt lookup where the context's last n-gram occurred before, the model drafter elsewhere, each sized
    by its own length policy: a lookup match copies text the context already holds (a quote, a name, code being
    edited) and is accepted far more often than a model's guess, so one acceptance estimate for both would
    misjudge each."""

    def __init__(self, lookup: DraftProposer, model: DraftProposer) -> None:
        self.lookup, self.model = lookup, model
        self.hidden_layers = model.hidden_layers

    def propose(self, context: torch.Tensor, room: int) -> Proposal:
        if self.lookup.drafter.propose(context, 1).tokens.numel():
            proposal = self.lookup.propose(context, room)
            if proposal.tokens.numel():
                return proposal
        return self.model.propose(context, room)

    def observe_hidden_states(self, states: torch.Tensor) -> None:
        self.model.observe_hidden_states(states)

    def observe(self, outcome: Outcome) -> None:
        self.lookup.observe(outcome)  # only the one that proposed learns from the outcome; both see the tokens
        self.model.observe(outcome)

    def close(self) -> None:
        self.lookup.close()
        self.model.close()
