"""Sampling is lossless: the empirical distribution of whole generated sequences matches the target's exact
distribution (chi-square goodness of fit; each test fails falsely with probability ALPHA). The exact
distribution is computed with transformers' own warpers, not the engine's, so these tests stand on their own:
temperature, top-k and top-p are all set, and the first step drafts a block of three tokens."""

import copy
from collections import Counter

import pytest
import torch
from tiny_models import char_tokenizer, hf_greedy, make_diffusion_drafter, make_target
from scipy.stats import chisquare
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from diffuspec import DiffuSpec, DiffuSpecConfig

ALPHA = 1e-3
DRAFT_LENGTH = 3
NEW_TOKENS = DRAFT_LENGTH + 1  # a step drafts at most one token fewer than the room left
# Generations per test. Checked by hand against deliberate bugs (same Gumbel noise for a whole block, noise
# not following the output position, probabilities for log-probabilities, top-p dropped, the Leviathan
# rule resampling from p instead of the residual): every one fails its test at p < 1e-8, except the
# residual bug, which needs the 1000 proposal trials (p 1e-13 there, 2e-3 at 500).
TRIALS = {"point-mass": 500, "proposal": 1000}
SAMPLING = dict(temperature=1.0, top_k=5, top_p=0.9)


def warpers(temperature: float, top_k: int | None = None, top_p: float | None = None) -> LogitsProcessorList:
    chain = [TemperatureLogitsWarper(temperature)]
    chain += [TopKLogitsWarper(top_k)] if top_k else []
    chain += [TopPLogitsWarper(top_p)] if top_p else []
    return LogitsProcessorList(chain)


@torch.no_grad()
def exact_sequence_distribution(target, prompt_ids, eos_ids, sampling: dict) -> dict[tuple, float]:
    """P(sequence) under the target's own sampling: enumerate every continuation of NEW_TOKENS tokens."""
    warp = warpers(**sampling)
    dist: dict[tuple, float] = {}

    def expand(seq: tuple, prob: float) -> None:
        if len(seq) == NEW_TOKENS or (seq and seq[-1] in eos_ids):
            dist[seq] = prob
            return
        logits = target(torch.tensor([prompt_ids + list(seq)])).logits[:, -1]
        probs = warp(None, logits).softmax(dim=-1)[0]
        for token in probs.nonzero()[:, 0].tolist():
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


def soft_diffusion_drafter(vocab_size: int) -> torch.nn.Module:
    """A random drafter with an untied, small output head: spread marginals (a tied head mostly echoes its
    input, the mask token, which after top-p is a point mass and would make the Leviathan rule's q moot)."""
    drafter = make_diffusion_drafter(vocab_size, seed=12)
    head = torch.nn.Linear(drafter.config.hidden_size, vocab_size, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    drafter.lm_head, drafter.config.tie_word_embeddings = head, False
    return drafter.eval()


@pytest.fixture(scope="module")
def small_pair():
    tokenizer = char_tokenizer("abc")  # 7 tokens: <pad> <eos> <mask> <unk> a b c
    # 49 reachable sequences, the likeliest at 0.19; top-p moves 0.25 of the mass
    target = make_target("llama", len(tokenizer), seed=24)
    prompt = tokenizer("ab")["input_ids"]
    exact = exact_sequence_distribution(target, prompt, {tokenizer.eos_token_id}, SAMPLING)
    # point-mass: the stock drafter, whose paths the target often accepts two deep; proposal: spread drafts
    drafters = {"point-mass": make_diffusion_drafter(len(tokenizer), seed=12),
                "proposal": soft_diffusion_drafter(len(tokenizer))}
    return tokenizer, target, drafters, prompt, exact


@pytest.mark.parametrize("draft_sampling", ["point-mass", "proposal"])
def test_sampled_sequences_follow_the_target_distribution(small_pair, draft_sampling):
    """point-mass: the deterministic CPS path under Gumbel-max verification; proposal: drafts sampled from
    the drafter's marginals under the Leviathan rule."""
    tokenizer, target, drafters, prompt, exact = small_pair
    config = DiffuSpecConfig(draft_sampling=draft_sampling, draft_length=DRAFT_LENGTH)
    engine = DiffuSpec(target, drafters[draft_sampling], tokenizer, config)
    samples, accepted_lengths = Counter(), Counter()
    for seed in range(TRIALS[draft_sampling]):
        out = engine.generate(prompt, max_new_tokens=NEW_TOKENS, seed=seed, **SAMPLING)
        samples[tuple(out.token_ids)] += 1
        assert out.stats.draft_lengths[0] == DRAFT_LENGTH
        accepted_lengths.update(out.stats.accepted_lengths)
    # drafts were really accepted, deep into the block, not only the target's own tokens
    assert sum(n for length, n in accepted_lengths.items() if length >= 2) >= TRIALS[draft_sampling] // 10
    assert goodness_of_fit(samples, exact) > ALPHA


def test_sampled_sequences_of_a_gemma3_layout_target_follow_its_distribution():
    """Gemma 3's layout (sliding-window layers around a global one; the window of 8 is shorter than prompt and
    output together), drafted by a copy of itself: its greedy drafts are accepted whenever the sampled token is
    the argmax, so Gumbel-max verification accepts deep into the block and the output must still be exact."""
    tokenizer = char_tokenizer("abc")
    target = make_target("gemma3", len(tokenizer), seed=19)  # 18 reachable sequences, the likeliest at 0.18
    prompt = tokenizer("abcabc")["input_ids"]
    exact = exact_sequence_distribution(target, prompt, {tokenizer.eos_token_id}, SAMPLING)
    engine = DiffuSpec(target, None, tokenizer, DiffuSpecConfig(mode="ar-drafter", draft_length=DRAFT_LENGTH),
                       ar_drafter=copy.deepcopy(target))
    samples, deep = Counter(), 0
    for seed in range(TRIALS["point-mass"]):
        out = engine.generate(prompt, max_new_tokens=NEW_TOKENS, seed=seed, **SAMPLING)
        samples[tuple(out.token_ids)] += 1
        deep += sum(length >= 2 for length in out.stats.accepted_lengths)
    assert deep >= TRIALS["point-mass"] // 10
    assert goodness_of_fit(samples, exact) > ALPHA


@pytest.mark.parametrize("wrong", [dict(temperature=0.8), dict(top_k=3), dict(top_p=None)])
def test_the_fit_test_can_fail(small_pair, wrong):
    """The fewest trials above, drawn from a sampler that is off, fail the check: temperature 0.8 or top-k 3
    instead of 1.0 and 5 (total variation 0.21 and 0.15 from the target's, inside its support: the chi-square
    statistic itself must see them), and top-p ignored (0.25: sequences the target cannot produce)."""
    tokenizer, target, _, prompt, exact = small_pair
    off = exact_sequence_distribution(target, prompt, {tokenizer.eos_token_id}, {**SAMPLING, **wrong})
    sequences = list(off)
    draws = torch.multinomial(torch.tensor([off[s] for s in sequences]), min(TRIALS.values()), replacement=True,
                              generator=torch.Generator().manual_seed(0))
    samples = Counter(sequences[i] for i in draws.tolist())
    if set(off) <= set(exact):
        assert goodness_of_fit(samples, exact) < ALPHA
    else:
        with pytest.raises(AssertionError, match="cannot produce"):
            goodness_of_fit(samples, exact)


@pytest.mark.parametrize("mode, draft_sampling", [("diffuspec", "point-mass"), ("diffuspec", "proposal"),
                                                  ("ar", "point-mass"), ("ar-drafter", "proposal")])
def test_tiny_temperatures_decode_like_greedy(targets, drafter, tokenizer, mode, draft_sampling):
    """Temperatures down to the smallest float are valid and stable (no NaN): the target's distribution
    collapses onto its argmax, so the output is the greedy one, in generate and stream alike."""
    target = targets["llama"]
    engine = DiffuSpec(target, drafter, tokenizer, DiffuSpecConfig(draft_sampling=draft_sampling),
                       ar_drafter=targets["qwen2"])
    ids = tokenizer("the quick brown fox")["input_ids"]
    greedy = hf_greedy(target, ids, 24)
    for temperature in (1e-45, 1e-20):
        out = engine.generate(ids, max_new_tokens=24, temperature=temperature, top_p=0.9, seed=0, mode=mode)
        assert out.token_ids == greedy, temperature
    events = engine.stream(ids, max_new_tokens=24, temperature=1e-45, top_k=3, seed=1, mode=mode)
    assert [t for event in events for t in event.token_ids] == greedy
