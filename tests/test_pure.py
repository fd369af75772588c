"""Verification rules, sampling warpers and acceptance statistics as pure functions on small hand-built
inputs. (Draft-length policies: test_length.py; stop strings: test_text.py.)"""

import pytest
import torch
from scipy.stats import chisquare
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from diffuspec.stats import per_position_acceptance
from diffuspec.verification import SamplingParams, greedy_accept, gumbel_accept, position_gumbel, sample_accept

ALPHA = 1e-3  # false-failure rate of each statistical test


# ----- acceptance -----------------------------------------------------------------------------------------


def test_greedy_accept_longest_prefix_then_target_token():
    logits = torch.eye(5)[[3, 1, 4, 2]] * 5  # target argmax: 3, 1, 4, then 2
    assert greedy_accept(torch.tensor([3, 1, 0]), logits) == (2, 4)
    assert greedy_accept(torch.tensor([3, 1, 4]), logits) == (3, 2)  # all accepted: bonus token
    assert greedy_accept(torch.tensor([0, 1, 4]), logits) == (0, 3)
    assert greedy_accept(torch.tensor([], dtype=torch.long), logits[:1]) == (0, 3)



def test_per_position_acceptance_on_partly_accepted_blocks():
    # Steps drafting 4, 2 and 3 tokens with 2, 0 and 3 accepted: position 0 tried 3 times, accepted twice; ...
    assert per_position_acceptance([4, 2, 3], [2, 0, 3]) == [2 / 3, 2 / 3, 1 / 2, 0.0]
    assert per_position_acceptance([5], [5]) == [1.0] * 5
    assert per_position_acceptance([0, 2], [0, 0]) == [0.0, 0.0]  # a step without a draft tried nothing
    assert per_position_acceptance([], []) == []


def _first_token_counts(draft, draft_probs, target_probs, trials, seed=0):
    generator = torch.Generator().manual_seed(seed)
    counts = torch.zeros(target_probs.shape[-1])
    for _ in range(trials):
        n, token = sample_accept(draft, draft_probs, target_probs, generator)
        counts[draft[0] if n > 0 else token] += 1
    return counts


@pytest.mark.parametrize("rule", ["point-mass", "leviathan"])
def test_sample_accept_first_token_has_target_distribution(rule):
    p = torch.tensor([[0.1, 0.5, 0.15, 0.25], [0.25, 0.25, 0.25, 0.25]])
    q = torch.tensor([[0.4, 0.1, 0.3, 0.2]])
    generator = torch.Generator().manual_seed(1)
    trials, counts = 4000, torch.zeros(4)
    for _ in range(trials):
        if rule == "leviathan":  # the draft really is a sample from q
            draft = torch.multinomial(q[0], 1, generator=generator)
            n, token = sample_accept(draft, q, p, generator)
        else:  # a fixed (deterministic) draft token, Gumbel-max verification with fresh noise per trial
            draft = torch.tensor([2])
            n, token = gumbel_accept(draft, p, position_gumbel(len(counts) * trials + int(counts.sum()), 0, 2, 4, "cpu"))
        counts[int(draft[0]) if n else token] += 1
    assert chisquare(counts.numpy(), (p[0] * trials).numpy()).pvalue > ALPHA


def test_sample_accept_with_soft_q_on_a_fixed_draft_is_biased():
    # Why the point-mass rule exists: applying min(1, p/q) to a token that was NOT drawn from q is wrong.
    p = torch.tensor([[0.1, 0.5, 0.15, 0.25], [0.25] * 4])
    q = torch.tensor([[0.05, 0.05, 0.85, 0.05]])
    counts = _first_token_counts(torch.tensor([2]), q, p, 4000)
    assert chisquare(counts.numpy(), (p[0] * 4000).numpy()).pvalue < ALPHA


def test_gumbel_noise_depends_only_on_seed_and_position():
    a = position_gumbel(7, 3, 4, 10, "cpu")
    assert torch.equal(a[1:], position_gumbel(7, 4, 3, 10, "cpu"))  # position 4.. again: the same rows
    assert not torch.equal(a, position_gumbel(8, 3, 4, 10, "cpu"))


def test_tiny_temperatures_give_finite_probabilities():
    logits = torch.tensor([[1.0, 3.0, 3.0 - 1e-3, -2.0]])
    for temperature in (1e-45, 1e-30, 1e-8):
        probs = SamplingParams(temperature=temperature, top_p=0.9).probs(logits)
        assert torch.isfinite(probs).all() and probs[0, 1] == 1.0


def test_sampling_params_match_transformers_warpers():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3
    ours = SamplingParams(temperature=0.7, top_k=20, top_p=0.8).probs(logits)
    warpers = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(20), TopPLogitsWarper(0.8)])
    theirs = warpers(None, logits.clone()).softmax(-1)
    torch.testing.assert_close(ours, theirs)

