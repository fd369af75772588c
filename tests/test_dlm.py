"""Decoding with a diffusion LM alone (dlm) and Spiffy: dlm is the sampler it claims to be (an obviously correct
reference below), and Spiffy is lossless: greedy and seeded sampled output identical to dlm's, the sequence
distribution exact (chi-square), with fewer forward passes."""

import gc
import weakref
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare
from tiny_models import EOS, MASK, char_tokenizer, make_diffusion_drafter

from diffuspec.config import DiffuSpecError
from diffuspec.dlm import DLMSettings, GraphShape, calibrate_graph, dlm_steps, spiffy_steps
from diffuspec.dlm.rows import BlockRows
from diffuspec.verification import SamplingParams

GREEDY = SamplingParams()
SAMPLED = SamplingParams(temperature=0.9, top_k=5)
PROMPTS = (" the cat sat", "on a mat, and")


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_diffusion_drafter(len(tokenizer), seed=3)


def decode(steps_fn, model, prompt_ids, max_new_tokens, *, shifted=True, sampling=GREEDY, seed=None,
           eos=frozenset({EOS}), **settings):
    """Run one iterator to the end: (tokens, forwards, denoising steps, draft states evaluated)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    tokens, forwards, denoised, drafted = [], 0, 0, 0
    for step in steps_fn(model, MASK, prompt_ids, max_new_tokens, shifted=shifted, sampling=sampling,
                         generator=generator, eos_token_ids=eos, settings=DLMSettings(**settings)):
        tokens += step.tokens
        forwards += step.forwards
        denoised += step.denoising_steps
        drafted += step.graph_size
    return tokens, forwards, denoised, drafted


@torch.no_grad()
def reference_dlm(model, prompt_ids, max_new_tokens, block_length, steps_per_block, shifted, eos):
    """The sampler written plainly: whole sequence through the model for every state, one state at a time."""
    per_step = -(-block_length // steps_per_block)
    sequence, out = list(prompt_ids), []
    while len(out) < max_new_tokens:
        block = [MASK] * min(block_length, max_new_tokens - len(out))
        while MASK in block:
            logits = model(torch.tensor([sequence + block])).logits[0].float()
            start = len(sequence) - 1 if shifted else len(sequence)  # the row predicting block position 0
            logits = logits[start : start + len(block)]
            logits[:, MASK] = float("-inf")
            probs = logits.softmax(dim=-1)
            candidates = sorted(  # most confident first, leftmost among equals
                (-float(probs[j].max()), j, int(probs[j].argmax())) for j in range(len(block)) if block[j] == MASK
            )
            for _, j, token in candidates[:per_step]:
                block[j] = token
        sequence += block
        for token in block:
            out.append(token)
            if token in eos:
                return out
    return out


@pytest.mark.parametrize("shifted", [True, False])
@pytest.mark.parametrize("block_length, steps_per_block, max_new_tokens", [(4, 4, 10), (6, 3, 13), (5, 2, 9)])
def test_dlm_greedy_is_the_reference_sampler(model, tokenizer, shifted, block_length, steps_per_block,
                                             max_new_tokens):
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        expected = reference_dlm(model, ids, max_new_tokens, block_length, steps_per_block, shifted, {EOS})
        got, forwards, denoised, _ = decode(dlm_steps, model, ids, max_new_tokens, shifted=shifted,
                                            block_length=block_length, steps_per_block=steps_per_block,
                                            prefix_cache=False)
        assert got == expected
        assert forwards == denoised  # one forward per denoising step


@pytest.mark.parametrize("shifted", [True, False])
def test_eos_inside_a_block_ends_the_output(model, tokenizer, shifted):
    ids = tokenizer(PROMPTS[0])["input_ids"]
    free = reference_dlm(model, ids, 12, 8, 8, shifted, set())
    eos = frozenset({free[5]})  # a token produced mid-block: call it EOS
    expected = reference_dlm(model, ids, 12, 8, 8, shifted, eos)
    assert expected[-1] in eos and len(expected) < 12
    for prefix_cache in (False, True):
        dlm, spiffy = (
            decode(steps_fn, model, ids, 12, shifted=shifted, eos=eos, block_length=8, steps_per_block=8,
                   prefix_cache=prefix_cache)[0]
            for steps_fn in (dlm_steps, spiffy_steps)
        )
        assert spiffy == dlm
        assert all(t not in eos for t in dlm[:-1])
        if not prefix_cache:
            assert dlm == expected


@pytest.mark.parametrize("shifted", [True, False])
@pytest.mark.parametrize("prefix_cache", [True, False])
@pytest.mark.parametrize("block_length, steps_per_block, max_new_tokens", [(8, 8, 20), (8, 4, 13), (6, 3, 11)])
def test_spiffy_greedy_equals_dlm(model, tokenizer, shifted, prefix_cache, block_length, steps_per_block,
                                  max_new_tokens):
    # No pruning: the tiny random model is unsure everywhere (top probabilities near 0.3).
    settings = {"block_length": block_length, "steps_per_block": steps_per_block, "prefix_cache": prefix_cache,
                    "prune_below": 0.0}
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        expected, forwards, denoised, drafted = decode(dlm_steps, model, ids, max_new_tokens, shifted=shifted,
                                                       **settings)
        assert len(expected) == max_new_tokens and drafted == 0
        got, s_forwards, s_denoised, s_drafted = decode(spiffy_steps, model, ids, max_new_tokens,
                                                        shifted=shifted, **settings)
        assert got == expected
        assert s_denoised == denoised and s_forwards <= forwards and s_drafted > 0


@pytest.mark.parametrize("shifted", [True, False])
def test_spiffy_saves_forwards(model, tokenizer, shifted):
    saved = 0
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        forwards = [decode(steps_fn, model, ids, 24, shifted=shifted, block_length=8, steps_per_block=8,
                           prune_below=0.0)[1] for steps_fn in (dlm_steps, spiffy_steps)]
        saved += forwards[0] - forwards[1]
    assert saved > 0


def test_pruning_drops_unlikely_drafts_not_output(model, tokenizer):
    ids = tokenizer(PROMPTS[1])["input_ids"]
    runs = {prune: decode(spiffy_steps, model, ids, 16, shifted=False, block_length=8, steps_per_block=8,
                          prune_below=prune) for prune in (0.0, 0.25, 0.9)}
    assert runs[0.0][0] == runs[0.25][0] == runs[0.9][0]
    assert runs[0.0][3] > runs[0.25][3] > runs[0.9][3]  # draft states evaluated
    assert runs[0.9][3] == 0  # no top probability of the random model reaches 0.9


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_spiffy_sampled_equals_dlm_under_one_seed(model, tokenizer, prefix_cache):
    ids = tokenizer(PROMPTS[1])["input_ids"]
    saved_forwards = 0
    for seed in range(6):
        settings = {"block_length": 6, "steps_per_block": 6, "prefix_cache": prefix_cache, "prune_below": 0.0}
        expected, forwards, _, _ = decode(dlm_steps, model, ids, 12, sampling=SAMPLED, seed=seed, **settings)
        got, s_forwards, _, _ = decode(spiffy_steps, model, ids, 12, sampling=SAMPLED, seed=seed, **settings)
        assert got == expected
        saved_forwards += forwards - s_forwards
    assert saved_forwards > 0


def test_random_draws_come_from_the_generator_only(model, tokenizer):
    ids = tokenizer(PROMPTS[0])["input_ids"]
    state = torch.get_rng_state()
    runs = [decode(spiffy_steps, model, ids, 8, sampling=SAMPLED, seed=7, block_length=4, steps_per_block=4,
                   prune_below=0.0)[0] for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state)
    assert runs[0] == runs[1]


# --- the sequence distribution is exact -----------------------------------------------------------------

NEW_TOKENS = 3
TRIALS = 1000
ALPHA = 1e-3


@pytest.fixture(scope="module")
def small_dlm():
    tokenizer = char_tokenizer("abc")  # 7 tokens: <pad> <eos> <mask> <unk> a b c
    return tokenizer, make_diffusion_drafter(len(tokenizer), seed=12)


@torch.no_grad()
def exact_sequence_distribution(model, prompt_ids, sampling, block_length):
    """P(output) under the sampler, one block of NEW_TOKENS masks unmasked one position per step: at each state
    enumerate every joint draw at the masked positions; the most confident position (leftmost among equals)
    takes its drawn token."""
    dist: Counter = Counter()

    def expand(block: tuple, prob: float) -> None:
        masked = [j for j, t in enumerate(block) if t == MASK]
        if not masked:
            out = list(block)
            cut = out.index(EOS) + 1 if EOS in out else len(out)
            dist[tuple(out[:cut])] += prob
            return
        logits = model(torch.tensor([prompt_ids + list(block)])).logits[0, len(prompt_ids) - 1 :].float()
        logits[:, MASK] = float("-inf")
        probs = sampling.probs(logits[: len(block)])  # shifted: row j predicts block position j
        outcome: Counter = Counter()

        def draw(i: int, chosen: list, p: float) -> None:
            if i == len(masked):
                best = min(range(len(masked)), key=lambda k: (-float(probs[masked[k], chosen[k]]), masked[k]))
                outcome[masked[best], chosen[best]] += p
                return
            for token in probs[masked[i]].nonzero().flatten().tolist():
                draw(i + 1, chosen + [token], p * float(probs[masked[i], token]))

        draw(0, [], 1.0)
        for (j, token), p in outcome.items():
            expand(block[:j] + (token,) + block[j + 1 :], prob * p)

    expand((MASK,) * block_length, 1.0)
    return dist


def goodness_of_fit(samples: Counter, exact: dict) -> float:
    """Chi-square p-value, pooling the cells expected fewer than 5 times."""
    n = sum(samples.values())
    assert set(samples) <= set(exact), "an output the sampler cannot produce was generated"
    big = [seq for seq, p in exact.items() if p * n >= 5]
    small = [seq for seq in exact if seq not in big]
    observed = [samples[s] for s in big] + [sum(samples[s] for s in small)]
    expected = [exact[s] * n for s in big] + [sum(exact[s] for s in small) * n]
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    total = sum(expected)
    return chisquare(observed, [e * n / total for e in expected]).pvalue


@pytest.fixture(scope="module")
def spiffy_samples(small_dlm):
    """TRIALS seeded Spiffy outputs of the small model after "ab", and how many forwards advanced > 1 step."""
    tokenizer, model = small_dlm
    prompt = tokenizer("ab")["input_ids"]
    settings = DLMSettings(block_length=NEW_TOKENS, steps_per_block=NEW_TOKENS, prefix_cache=False, prune_below=0.0)
    samples, multi_step = Counter(), 0
    for seed in range(TRIALS):
        tokens = []
        for step in spiffy_steps(model, MASK, prompt, NEW_TOKENS, shifted=True, sampling=SAMPLED,
                                 generator=torch.Generator().manual_seed(seed), eos_token_ids=frozenset({EOS}),
                                 settings=settings):
            tokens += step.tokens
            multi_step += step.denoising_steps > 1
        samples[tuple(tokens)] += 1
    return samples, multi_step


def test_spiffy_sampled_sequences_follow_the_sampler_distribution(small_dlm, spiffy_samples):
    tokenizer, model = small_dlm
    samples, multi_step = spiffy_samples
    exact = exact_sequence_distribution(model, tokenizer("ab")["input_ids"], SAMPLED, NEW_TOKENS)
    assert multi_step > 0  # drafts were really used, not only the real state
    assert goodness_of_fit(samples, exact) > ALPHA


def test_the_fit_test_can_fail(small_dlm, spiffy_samples):
    """The same samples fail against the sampler's distribution at temperature 1.2 instead of 0.9."""
    tokenizer, model = small_dlm
    samples, _ = spiffy_samples
    wrong = SamplingParams(temperature=1.2, top_k=SAMPLED.top_k)
    exact = exact_sequence_distribution(model, tokenizer("ab")["input_ids"], wrong, NEW_TOKENS)
    assert goodness_of_fit(samples, exact) < ALPHA


# --- iterators, calibration, settings --------------------------------------------------------------------


@pytest.mark.parametrize("steps_fn", [dlm_steps, spiffy_steps])
def test_a_closed_iterator_leaks_nothing(model, tokenizer, steps_fn, monkeypatch):
    """Between steps no inference mode is left on; once closed, the model wrapper and its cache are freed."""
    wrappers = []
    init = BlockRows.__init__

    def tracked_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        wrappers.append(weakref.ref(self))

    monkeypatch.setattr(BlockRows, "__init__", tracked_init)
    ids = tokenizer(PROMPTS[0])["input_ids"]
    steps = steps_fn(model, MASK, ids, 40, shifted=True, sampling=GREEDY, generator=None,
                     eos_token_ids=frozenset({EOS}), settings=DLMSettings(block_length=8, steps_per_block=8))
    next(steps)
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
    assert len(wrappers) == 1 and wrappers[0]() is not None and wrappers[0]().cache is not None
    steps.close()
    del steps
    gc.collect()
    assert wrappers[0]() is None


def test_calibrated_graph_keeps_output_and_saves_forwards(model, tokenizer):
    settings = DLMSettings(block_length=8, steps_per_block=8, graph_size=6, prune_below=0.0)
    prompts = [tokenizer(p)["input_ids"] for p in (" a dog ran", "it was, in", "zebra")]
    graph = calibrate_graph(model, MASK, prompts, 16, shifted=False, sampling=GREEDY, generator=None,
                            eos_token_ids=frozenset({EOS}), settings=settings)
    assert isinstance(graph, GraphShape) and 0 < len(graph.nodes) <= 6 and graph.tokens_per_step == 1
    ids = tokenizer(PROMPTS[0])["input_ids"]
    expected, forwards, _, _ = decode(dlm_steps, model, ids, 16, shifted=False, block_length=8, steps_per_block=8)
    got, s_forwards, _, _ = decode(spiffy_steps, model, ids, 16, shifted=False, block_length=8, steps_per_block=8,
                                   graph_size=6, graph=graph, prune_below=0.0)
    assert got == expected and s_forwards < forwards


def test_graph_shape_needs_parents_first():
    GraphShape(1, (((0, 0),), ((0, 0), (1, 0))))
    with pytest.raises(ValueError, match="parent"):
        GraphShape(1, (((0, 0), (1, 0)), ((0, 0),)))
    with pytest.raises(ValueError, match="steps"):
        GraphShape(2, (((0, 0),),))


@pytest.mark.parametrize(
    "bad",
    [
        {"block_length": 0},
        {"block_length": 4, "steps_per_block": 5},
        {"steps_per_block": 0},
        {"block_length": 2.5},
        {"prefix_cache": "yes"},
        {"graph_size": -1},
        {"graph_depth": 0},
        {"token_ranks": 0},
        {"prune_below": 1.0},
        {"prune_below": -0.1},
        {"graph": "wide"},
        {"block_length": 8, "steps_per_block": 4, "graph": GraphShape(1, (((0, 0),),))},
    ],
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(DiffuSpecError):
        DLMSettings(**bad)


def test_bad_calls_are_refused(model, tokenizer):
    call = {"shifted": True, "sampling": GREEDY, "generator": None, "eos_token_ids": frozenset({EOS}),
            "settings": DLMSettings()}
    with pytest.raises(DiffuSpecError, match="empty"):
        dlm_steps(model, MASK, [], 4, **call)
    with pytest.raises(DiffuSpecError, match="max_new_tokens"):
        spiffy_steps(model, MASK, [5], 0, **call)
    with pytest.raises(DiffuSpecError, match="mask token"):
        spiffy_steps(model, 10_000, [5], 4, **call)
