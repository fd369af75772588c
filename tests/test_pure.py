"""ADL, acceptance and stop handling as pure functions on small hand-built inputs."""

import pytest
import torch
from scipy.stats import chisquare
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from diffuspec.length import ADLState, adl_update, generated_length
from diffuspec.stopping import find_stop, safe_length
from diffuspec.verification import SamplingParams, greedy_accept, gumbel_accept, position_gumbel, sample_accept

EOS = 0
ALPHA = 1e-3  # false-failure rate of each statistical test


# ----- ADL ------------------------------------------------------------------------------------------------


def test_generated_length_counts_tokens_before_first_eos():
    assert generated_length([5, 6, EOS, 7], k=4, eos_token_ids={EOS}) == 2
    assert generated_length([5, 6, 7], k=3, eos_token_ids={EOS}) == 3


def test_adl_update_follows_the_paper():
    params = dict(k_min=20, k_max=30, delta=10, rho=0.5)
    state = ADLState(k=30)  # k_1 = k_max, EMAs start at 0
    state = adl_update(state, generated=30, accepted=6, **params)
    assert (state.generated_ema, state.accepted_ema) == (15.0, 3.0)
    assert state.k == 20  # G = 15 < k_min, A < G: clipped up to k_min
    state = adl_update(state, generated=30, accepted=30, **params)
    assert (state.generated_ema, state.accepted_ema) == (22.5, 16.5)
    assert state.k == 22  # A < G: k = round(G)
    state = adl_update(ADLState(k=30, generated_ema=10, accepted_ema=10), 10, 12, **params)
    assert state.k == 20  # A >= G: G + delta = 20
    state = adl_update(ADLState(k=30, generated_ema=25, accepted_ema=25), 25, 25, **params)
    assert state.k == 30  # G + delta = 35 clipped to k_max


# ----- acceptance -----------------------------------------------------------------------------------------


def test_greedy_accept_longest_prefix_then_target_token():
    logits = torch.eye(5)[[3, 1, 4, 2]] * 5  # target argmax: 3, 1, 4, then 2
    assert greedy_accept(torch.tensor([3, 1, 0]), logits) == (2, 4)
    assert greedy_accept(torch.tensor([3, 1, 4]), logits) == (3, 2)  # all accepted: bonus token
    assert greedy_accept(torch.tensor([0, 1, 4]), logits) == (0, 3)
    assert greedy_accept(torch.tensor([], dtype=torch.long), logits[:1]) == (0, 3)


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


# ----- stop strings ---------------------------------------------------------------------------------------


def test_find_stop_spanning_blocks():
    assert find_stop("hello wor", ["world"], new_from=6) == -1
    assert find_stop("hello world!", ["world"], new_from=9) == 6  # begun in an earlier block
    assert find_stop("a STOP b END", ["END", "STOP"], new_from=0) == 2  # the earliest wins


def test_safe_length_holds_back_possible_stop_prefix_and_partial_chars():
    assert safe_length("hello wo", ["world"]) == 6
    assert safe_length("hello", ["world"]) == 5
    assert safe_length("abc\ufffd", []) == 3
