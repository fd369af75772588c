"""``LookupFirst``: prompt lookup where the context repeats itself, the model drafter elsewhere, each length
policy taught only by its own drafts; and on the engine, the speed it buys without changing a token."""

import torch

from diffuspec import DiffuSpec, DiffuSpecConfig
from diffuspec.drafters import Draft, Drafter, PromptLookupDrafter
from diffuspec.length import FixedLength, StepFeedback
from diffuspec.path_search import NGramProxy, PathSearch
from diffuspec.proposers import DraftProposer, LookupFirst, Outcome

VOCAB = 50


class FixedDrafter(Drafter):
    """Always drafts ``tokens``; records the hidden states it is shown."""

    hidden_layers = (1,)

    def __init__(self, tokens: list[int]) -> None:
        self.tokens, self.states = tokens, []

    def propose(self, context, k, sampling=None, generator=None) -> Draft:
        return Draft(tokens=torch.tensor(self.tokens[:k]))

    def observe_hidden_states(self, states: torch.Tensor) -> None:
        self.states.append(states)


class RecordingLength(FixedLength):
    def __init__(self, k: int) -> None:
        super().__init__(k, search=False)
        self.seen: list[StepFeedback] = []

    def observe(self, feedback: StepFeedback) -> None:
        self.seen.append(feedback)


def proposer(drafter: Drafter, k: int, prompt: list[int]) -> DraftProposer:
    return DraftProposer(drafter, RecordingLength(k), PathSearch(enabled=False), NGramProxy(VOCAB),
                         vocab_size=VOCAB, eos_token_ids=frozenset(), prompt_ids=prompt, draft_sampling=None,
                         generator=None)


def pair(prompt: list[int]) -> tuple[LookupFirst, DraftProposer, DraftProposer]:
    lookup, model = proposer(PromptLookupDrafter(), 3, prompt), proposer(FixedDrafter([40, 41, 42, 43]), 4, prompt)
    return LookupFirst(lookup, model), lookup, model


def test_a_repeated_ngram_is_drafted_by_lookup_and_only_lookup_learns_from_it():
    prompt = [1, 2, 3, 4, 5, 1, 2]  # "1 2" occurred before, followed by 3 4 5
    both, lookup, model = pair(prompt)
    proposal = both.propose(torch.tensor(prompt), room=10)
    assert proposal.tokens.tolist() == [3, 4, 5]
    both.observe(Outcome(accepted=2, next_token=9, committed=[3, 4, 9]))
    assert [(f.drafted, f.accepted) for f in lookup.policy.seen] == [(3, 2)]
    assert model.policy.seen == []
    assert lookup.history == model.history == [*prompt, 3, 4, 9]  # both proposers see every committed token


def test_without_a_match_the_model_drafts_and_only_the_model_learns_from_it():
    prompt = [1, 2, 3, 4, 5, 6]
    both, lookup, model = pair(prompt)
    proposal = both.propose(torch.tensor(prompt), room=10)
    assert proposal.tokens.tolist() == [40, 41, 42, 43]
    both.observe(Outcome(accepted=1, next_token=7, committed=[40, 7]))
    assert [(f.drafted, f.accepted) for f in model.policy.seen] == [(4, 1)]
    assert lookup.policy.seen == []
    # a later step drafted by lookup leaves the model's policy alone (no stale draft of its own is re-read)
    context = [*prompt, 40, 7, 3]  # "3" occurred before, followed by 4 5 6
    assert both.propose(torch.tensor(context), room=10).tokens.tolist() == [4, 5, 6]
    both.observe(Outcome(accepted=3, next_token=8, committed=[4, 5, 6, 8]))
    assert len(model.policy.seen) == 1 and [(f.drafted, f.accepted) for f in lookup.policy.seen] == [(3, 3)]


def test_hidden_states_reach_the_model_drafter_on_every_step():
    both, _, model = pair([1, 2, 1])
    assert both.hidden_layers == (1,)
    states = torch.randn(2, 8)
    both.observe_hidden_states(states)
    assert model.drafter.states == [states]


def test_lookup_first_is_lossless_and_drafts_what_the_model_drafter_cannot(targets, tokenizer):
    """A drafter whose drafts are never right (a token the target never writes here) beside lookup: the
    random target's text repeats some of its n-grams, which lookup drafts once they have been seen."""
    target = targets["llama"]
    prompt = tokenizer("the cat sat on the mat")["input_ids"]
    reference = target.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=60)[0, len(prompt):].tolist()
    never = next(t for t in range(len(tokenizer)) if t not in reference and t not in prompt)
    runs = {first: DiffuSpec(target, FixedDrafter([never] * 4), tokenizer,
                             DiffuSpecConfig(draft_length=4, prompt_lookup_first=first)).generate(prompt, 60)
            for first in (True, False)}
    assert runs[True].token_ids == runs[False].token_ids == reference
    assert runs[False].stats.accepted_tokens == 0
    assert runs[True].stats.accepted_tokens > 0
