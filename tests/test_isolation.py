"""Requests share nothing but the models: a request drafts exactly what it would draft on a fresh engine,
whatever ran before it (the drafter's prefix cache, the n-gram proxy and the length policy are per request)."""

import pytest

from diffuspec import DiffuSpec, DiffuSpecConfig
from diffuspec.proposers import DraftProposer

# The prompts share a prefix, so a drafter cache left over from one request would be reused by the next (its
# keys and values were computed beside that request's masks and tokens: other logits, other drafts).
PROMPTS = ["the quick brown fox", "the quick brown cat sat on"]


@pytest.fixture
def drafts(monkeypatch):
    """Every draft proposed, in order (the real proposer, observed)."""
    seen = []
    propose = DraftProposer.propose

    def observed(self, context, room):
        proposal = propose(self, context, room)
        seen.append(proposal.tokens.tolist())
        return proposal

    monkeypatch.setattr(DraftProposer, "propose", observed)
    return seen


@pytest.mark.parametrize("policy", [dict(draft_length=5), dict(length_policy="adl")])  # deterministic lengths
def test_a_request_drafts_as_on_a_fresh_engine(targets, drafter, tokenizer, drafts, policy):
    config = DiffuSpecConfig(drafter_prefix_cache=True, **policy)

    def run(engine, prompt):
        start = len(drafts)
        out = engine.generate(prompt, max_new_tokens=20)
        return out.token_ids, drafts[start:]

    engine = DiffuSpec(targets["llama"], drafter, tokenizer, config)
    in_a_row = [run(engine, prompt) for prompt in [*PROMPTS, PROMPTS[0]]]
    fresh = [run(DiffuSpec(targets["llama"], drafter, tokenizer, config), prompt) for prompt in PROMPTS]
    assert in_a_row == [*fresh, fresh[0]]
