"""CPS, ADL, acceptance and stop handling as pure functions on small hand-built inputs."""

import math

import pytest
import torch
from scipy.stats import chisquare
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from diffuspec.length import ADLState, adl_update, generated_length
from diffuspec.path_search import CorpusNGram, NGramProxy, PathSearch, beam_search, prune_lattice
from diffuspec.stopping import find_stop, safe_length
from diffuspec.verification import SamplingParams, greedy_accept, gumbel_accept, position_gumbel, sample_accept

EOS = 0
ALPHA = 1e-3  # false-failure rate of each statistical test


def logprobs(rows):
    return torch.tensor(rows, dtype=torch.float).log()


# ----- CPS ------------------------------------------------------------------------------------------------


def test_prune_keeps_smallest_set_reaching_tau_and_always_eos():
    lattice = prune_lattice(
        logprobs([[0.05, 0.5, 0.3, 0.1, 0.05], [0.01, 0.9, 0.05, 0.02, 0.02]]),
        tau=0.8, max_candidates=15, eos_token_ids=[EOS],
    )
    assert [t for t, _ in lattice[0]] == [1, 2, EOS]  # 0.5 + 0.3 reaches 0.8; EOS added
    assert [t for t, _ in lattice[1]] == [1, EOS]  # 0.9 alone reaches 0.8
    assert lattice[0][2][1] == pytest.approx(math.log(0.05))


def test_prune_caps_candidates_and_stops_after_eos_position():
    flat = [[0.2] * 5]
    eos_first = [[0.6, 0.1, 0.1, 0.1, 0.1]]
    lattice = prune_lattice(logprobs(flat + eos_first + flat), tau=0.99, max_candidates=2, eos_token_ids=[EOS])
    assert len(lattice) == 2  # nothing after the position whose best token is EOS
    assert len(lattice[0]) == 3  # capped at 2, plus EOS


def test_beam_search_prefers_causally_consistent_path():
    # Per position the argmax is "a b", but the proxy has only ever seen "a c" / "d b".
    proxy = NGramProxy(vocab_size=5, order=2)
    proxy.extend([1, 3, 1, 3, 1, 3, 4, 2, 4, 2])
    lattice = [[(1, math.log(0.5)), (4, math.log(0.45))], [(2, math.log(0.5)), (3, math.log(0.45))]]
    path = beam_search(lattice, proxy, [4, 2], beam_width=3, lam=0.5, eos_token_ids=[EOS])
    assert path in ([1, 3], [4, 2])
    assert beam_search(lattice, proxy, [4, 2], beam_width=3, lam=1.0, eos_token_ids=[EOS]) == [1, 2]


def test_beam_search_path_ends_at_eos():
    proxy = NGramProxy(vocab_size=4, order=2)
    proxy.extend([2, EOS, 2, EOS])
    lattice = [[(2, math.log(0.9))], [(EOS, math.log(0.6)), (3, math.log(0.4))], [(3, math.log(0.9))]]
    assert beam_search(lattice, proxy, [1], beam_width=2, lam=0.5, eos_token_ids=[EOS]) == [2, EOS]


def test_cps_disabled_is_argmax():
    lp = logprobs([[0.1, 0.6, 0.3], [0.7, 0.2, 0.1]])
    assert PathSearch(enabled=False)(lp, [], NGramProxy(3), [EOS]) == [1, 0]


def test_ngram_proxy_is_a_distribution():
    proxy = NGramProxy(vocab_size=6, order=3)
    proxy.extend([1, 2, 3, 1, 2, 4, 1, 2, 3])
    for history in [(), (2,), (1, 2), (5, 5)]:
        assert sum(math.exp(proxy.logprob(history, t)) for t in range(6)) == pytest.approx(1.0)
    assert proxy.logprob((1, 2), 3) > proxy.logprob((1, 2), 4) > proxy.logprob((1, 2), 5)


SEQUENCE = [1, 2, 3, 1, 2, 4, 1, 2, 3, 5, 1, 2, 3]
HISTORIES = [(), (2,), (1, 2), (5, 5), (3, 1, 2), (4,)]


def test_corpus_ngram_equals_the_online_model_on_the_same_text():
    corpus = CorpusNGram.count(torch.tensor([SEQUENCE]), vocab_size=6, order=3, min_count=1)
    online = NGramProxy(vocab_size=6, order=3)
    online.extend(SEQUENCE)
    rows = [(h, t) for h in HISTORIES for t in range(6)]
    expected = [math.exp(online.logprob(h, t)) for h, t in rows]
    assert [corpus.prob(h, t) for h, t in rows] == pytest.approx(expected)


def test_corpus_ngram_prunes_rare_pairs_and_stays_a_distribution(tmp_path):
    corpus = CorpusNGram.count(torch.tensor([SEQUENCE, SEQUENCE[::-1]]), vocab_size=6, order=3, start=2)
    assert all(int(c.min()) >= 2 for table in corpus.tables[1:] for c in [table["counts"]])
    for history in HISTORIES:
        assert sum(corpus.prob(history, t) for t in range(6)) == pytest.approx(1.0)
    corpus.save(tmp_path / "table.safetensors")
    loaded = CorpusNGram.load(tmp_path / "table.safetensors")
    assert (loaded.order, loaded.vocab_size) == (3, 6)
    assert [loaded.prob(h, 3) for h in HISTORIES] == [corpus.prob(h, 3) for h in HISTORIES]


def test_corpus_ngram_refuses_keys_that_overflow():
    assert (CorpusNGram.longest_order(2048), CorpusNGram.longest_order(151_936)) == (5, 3)
    with pytest.raises(ValueError, match="lower order"):
        CorpusNGram.count(torch.tensor([[1, 2, 3]]), vocab_size=200_000, order=4)


def test_proxy_mixes_online_and_corpus_models():
    corpus = CorpusNGram.count(torch.tensor([[1, 2, 3] * 4]), vocab_size=6, order=3, min_count=1)
    online_only, corpus_only = NGramProxy(6, 2), NGramProxy(6, 2, corpus, corpus_weight=1.0)
    mixed = NGramProxy(6, 2, corpus, corpus_weight=0.25)
    for proxy in (online_only, corpus_only, mixed):
        proxy.extend([4, 5, 4, 5])
    assert mixed.order == 3  # reads as much history as its longer part
    for history in [(1, 2), (4,), ()]:
        got = [math.exp(mixed.logprob(history, t)) for t in range(6)]
        want = [
            0.75 * math.exp(online_only.logprob(history, t)) + 0.25 * math.exp(corpus_only.logprob(history, t))
            for t in range(6)
        ]
        assert got == pytest.approx(want) and sum(got) == pytest.approx(1.0)
    assert corpus_only.logprob((1, 2), 3) > math.log(0.5)


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
