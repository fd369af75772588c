"""Sampling is lossless: the empirical distribution of whole generated sequences matches the target's exact
distribution (chi-square goodness of fit; each test fails falsely with probability ALPHA)."""

from collections import Counter

import pytest
import torch
from conftest import char_tokenizer, make_diffusion_drafter, make_target
from scipy.stats import chisquare

from diffuspec import DiffuSpec, DiffuSpecConfig, SamplingParams

ALPHA = 1e-3
NEW_TOKENS = 3
TRIALS = 1000
SAMPLING = dict(temperature=0.9, top_k=5)


@torch.no_grad()
def exact_sequence_distribution(target, prompt_ids, eos_ids, sampling: SamplingParams) -> dict[tuple, float]:
    """P(sequence) under the target's own sampling: enumerate every continuation of NEW_TOKENS tokens."""
    vocab = target.config.vocab_size
    dist: dict[tuple, float] = {}

    def expand(seq: tuple, prob: float) -> None:
        if len(seq) == NEW_TOKENS or (seq and seq[-1] in eos_ids):
            dist[seq] = prob
            return
        logits = target(torch.tensor([prompt_ids + list(seq)])).logits[0, -1]
        probs = sampling.probs(logits)
        for token in range(vocab):
            if probs[token] > 0:
                expand(seq + (token,), prob * float(probs[token]))

    expand((), 1.0)
    return dist


def goodness_of_fit(samples: Counter, exact: dict[tuple, float]) -> float:
    """Chi-square p-value, pooling the cells expected fewer than 5 times."""
    n = sum(samples.values())
    assert set(samples) <= set(exact), "a sequence the target cannot produce was generated"
    big = [seq for seq, p in exact.items() if p * n >= 5]
    small = [seq for seq in exact if seq not in big]
    observed = [samples[s] for s in big] + [sum(samples[s] for s in small)]
    expected = [exact[s] * n for s in big] + [sum(exact[s] for s in small) * n]
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    total = sum(expected)  # float rounding: rescale so both sides sum to n exactly
    return chisquare(observed, [e * n / total for e in expected]).pvalue


@pytest.fixture(scope="module")
def small_pair():
    tokenizer = char_tokenizer("abc")  # 7 tokens: <pad> <eos> <mask> <unk> a b c
    target = make_target("llama", len(tokenizer), seed=11)  # 85 reachable sequences, the likeliest at 0.39
    return tokenizer, target, make_diffusion_drafter(len(tokenizer), seed=12)


@pytest.mark.parametrize("draft_sampling", ["point-mass", "proposal"])
def test_sampled_sequences_follow_the_target_distribution(small_pair, draft_sampling):
    tokenizer, target, drafter = small_pair
    engine = DiffuSpec(target, drafter, tokenizer, DiffuSpecConfig(draft_sampling=draft_sampling, draft_length=3))
    prompt = tokenizer("ab")["input_ids"]
    exact = exact_sequence_distribution(target, prompt, engine.eos_token_ids, SamplingParams(**SAMPLING))
    samples, accepted = Counter(), 0
    for seed in range(TRIALS):
        out = engine.generate(prompt, max_new_tokens=NEW_TOKENS, seed=seed, **SAMPLING)
        samples[tuple(out.token_ids)] += 1
        accepted += out.stats.accepted_tokens
    assert accepted > 0  # drafts were really accepted, not only the target's own tokens
    assert goodness_of_fit(samples, exact) > ALPHA


def test_the_fit_test_can_fail(small_pair):
    """The same check rejects a sampler that is off (temperature 1.6 instead of 0.9: total variation 0.27)."""
    tokenizer, target, drafter = small_pair
    engine = DiffuSpec(target, drafter, tokenizer)
    prompt = tokenizer("ab")["input_ids"]
    exact = exact_sequence_distribution(target, prompt, engine.eos_token_ids, SamplingParams(**SAMPLING))
    wrong = {**SAMPLING, "temperature": 1.6}
    samples = Counter(
        tuple(engine.generate(prompt, max_new_tokens=NEW_TOKENS, seed=s, **wrong).token_ids) for s in range(TRIALS)
    )
    assert goodness_of_fit(samples, exact) < ALPHA
