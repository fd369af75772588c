"""CPS (diffuspec.path_search): lattice pruning, the n-gram proxy and the beam search, on small hand-built inputs,
checked against the definitions written out here (Witten-Bell, the path score, exhaustive search)."""

import itertools
import math
from pathlib import Path

import pytest
import torch

import diffuspec
from diffuspec.config import DiffuSpecError
from diffuspec.path_search import CorpusNGram, Lattice, NGramProxy, PathSearch, beam_search, prune_lattice

EOS = 0
SHIPPED_TABLE = Path(diffuspec.__file__).parent / "demo" / "drafter" / "cps_ngram.safetensors"


def logprobs(rows):
    return torch.tensor(rows, dtype=torch.float).log()


def lattice_of(rows: list[list[tuple[int, float]]]) -> Lattice:
    """A lattice from per-position (token, probability) candidates."""
    return [([t for t, _ in row], [math.log(p) for _, p in row]) for row in rows]


def candidates(lattice: Lattice, position: int) -> list[tuple[int, float]]:
    return list(zip(*lattice[position]))


def witten_bell(text, order, vocab_size, history, token):
    """Interpolated Witten-Bell straight from its definition: contexts of up to order - 1 tokens, each mixing
    what followed it in ``text`` with the next shorter context's estimate; stop at a context never seen."""
    prob = 1.0 / vocab_size
    for h in range(min(order - 1, len(history)) + 1):
        context = tuple(history[len(history) - h :])
        following = [text[i] for i in range(h, len(text)) if tuple(text[i - h : i]) == context]
        if not following:
            break
        types = len(set(following))
        prob = (following.count(token) + types * prob) / (len(following) + types)
    return prob


def path_score(path, lattice, proxy, history, lam):
    """S(path) / len(path): the drafter and proxy terms of every token, each read with its full history."""
    total = 0.0
    for i, token in enumerate(path):
        drafter = dict(candidates(lattice, i))[token]
        total += lam * drafter + (1 - lam) * proxy.logprob(tuple(history) + tuple(path[:i]), token)
    return total / len(path)


def all_paths(lattice):
    """Every path through the lattice; a path ends at its first EOS."""
    paths = set()
    for full in itertools.product(*[[t for t, _ in candidates(lattice, i)] for i in range(len(lattice))]):
        end = next((i + 1 for i, t in enumerate(full) if t == EOS), len(full))
        paths.add(full[:end])
    return [list(p) for p in paths]


SEQUENCE = [1, 2, 3, 1, 2, 4, 1, 2, 3, 5, 1, 2, 3]
HISTORIES = [(), (2,), (1, 2), (5, 5), (3, 1, 2), (4,), (0, 1, 2)]


# ----- pruning ---------------------------------------------------------------------------------------------


def test_prune_keeps_smallest_set_reaching_tau_and_always_eos():
    lattice = prune_lattice(
        logprobs([[0.05, 0.5, 0.3, 0.1, 0.05], [0.01, 0.9, 0.05, 0.02, 0.02]]),
        tau=0.8, max_candidates=15, eos_token_ids=[EOS],
    )
    assert [t for t, _ in candidates(lattice, 0)] == [1, 2, EOS]  # 0.5 + 0.3 reaches 0.8; EOS added
    assert [t for t, _ in candidates(lattice, 1)] == [1, EOS]  # 0.9 alone reaches 0.8
    assert candidates(lattice, 0)[2][1] == pytest.approx(math.log(0.05))


def test_prune_caps_candidates_and_stops_after_eos_position():
    flat = [[0.2] * 5]
    eos_first = [[0.6, 0.1, 0.1, 0.1, 0.1]]
    lattice = prune_lattice(logprobs(flat + eos_first + flat), tau=0.99, max_candidates=2, eos_token_ids=[EOS])
    assert len(lattice) == 2  # nothing after the position whose best token is EOS
    assert len(candidates(lattice, 0)) == 3  # capped at 2, plus EOS
    tokens = [t for t, _ in candidates(lattice, 1)]
    assert len(tokens) == 2 and tokens[0] == EOS and tokens[1] != EOS  # EOS kept once


# ----- the n-gram proxy ----------------------------------------------------------------------------------


def test_online_model_is_witten_bell_for_every_history_length():
    # Histories shorter than the order (even empty), extended in uneven pieces.
    text = [1, 2, 3, 1, 2, 4, 1, 2, 3, 5, 1, 2, 3, 3, 1]
    for order in (1, 2, 3, 4):
        proxy = NGramProxy(vocab_size=6, order=order)
        for piece in (text[:1], text[1:5], [], text[5:]):
            proxy.extend(piece)
        for history in HISTORIES:
            got = [math.exp(proxy.logprob(history, t)) for t in range(6)]
            assert got == pytest.approx([witten_bell(text, order, 6, history, t) for t in range(6)], rel=1e-12)
            assert sum(got) == pytest.approx(1.0)


def test_online_model_grows_as_it_would_from_scratch():
    grown, scratch = NGramProxy(vocab_size=6, order=3), NGramProxy(vocab_size=6, order=3)
    grown.extend(SEQUENCE[:4])
    grown.extend(SEQUENCE[4:])
    scratch.extend(SEQUENCE)
    assert [grown.logprob(h, t) for h in HISTORIES for t in range(6)] == [
        scratch.logprob(h, t) for h in HISTORIES for t in range(6)
    ]
    grown.reset()
    assert grown.logprob((1, 2), 3) == math.log(1 / 6)  # nothing seen: uniform


def test_corpus_ngram_equals_the_online_model_on_the_same_text():
    corpus = CorpusNGram.count(torch.tensor([SEQUENCE]), vocab_size=6, order=3, min_count=1)
    online = NGramProxy(vocab_size=6, order=3)
    online.extend(SEQUENCE)
    rows = [(h, t) for h in HISTORIES for t in range(6)]
    assert [math.log(corpus.prob(h, t)) for h, t in rows] == [online.logprob(h, t) for h, t in rows]  # exactly


def test_corpus_ngram_prunes_rare_pairs_and_stays_a_distribution(tmp_path):
    corpus = CorpusNGram.count(torch.tensor([SEQUENCE, SEQUENCE[::-1]]), vocab_size=6, order=3, start=2)
    assert all(int(c.min()) >= 2 for table in corpus.tables[1:] for c in [table["counts"]])
    for history in HISTORIES:
        assert sum(corpus.prob(history, t) for t in range(6)) == pytest.approx(1.0)
    corpus.save(tmp_path / "table.safetensors")
    loaded = CorpusNGram.load(tmp_path / "table.safetensors")
    assert (loaded.order, loaded.vocab_size) == (3, 6)
    assert [loaded.prob(h, 3) for h in HISTORIES] == [corpus.prob(h, 3) for h in HISTORIES]


def test_shipped_corpus_table_loads_and_reads_its_tables():
    # The trie built on load answers what the saved tables say (the reference reads them directly).
    corpus = CorpusNGram.load(SHIPPED_TABLE)
    v = corpus.vocab_size
    counts = [dict(zip(t["keys"].tolist(), t["counts"].tolist())) for t in corpus.tables]
    contexts = [
        dict(zip(t["contexts"].tolist(), zip(t["totals"].tolist(), t["types"].tolist()))) for t in corpus.tables
    ]

    def reference(history, token):
        prob, context = 1.0 / v, 0
        for h in range(min(corpus.order - 1, len(history)) + 1):
            if h:
                context += history[-h] * v ** (h - 1)
            if context not in contexts[h]:
                break
            total, types = contexts[h][context]
            prob = (counts[h].get(context * v + token, 0) + types * prob) / (total + types)
        return prob

    seen = corpus.tables[-1]["keys"][:50:5].tolist()  # histories the table knows, and their tails
    histories = [tuple((key // v ** (i + 1)) % v for i in reversed(range(corpus.order - 1))) for key in seen]
    histories += [h[-2:] for h in histories] + [(), (7,), (2047, 2047, 2047, 2047)]
    tokens = corpus.tables[0]["keys"][:40].tolist()
    for history in histories:
        assert [corpus.prob(history, t) for t in tokens] == pytest.approx([reference(history, t) for t in tokens])


def test_corpus_ngram_refuses_keys_that_overflow():
    assert (CorpusNGram.longest_order(2048), CorpusNGram.longest_order(151_936)) == (5, 3)
    with pytest.raises(DiffuSpecError, match="lower order"):
        CorpusNGram.count(torch.tensor([[1, 2, 3]]), vocab_size=200_000, order=4)
    with pytest.raises(DiffuSpecError, match="order"):
        NGramProxy(vocab_size=6, order=0)


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


# ----- the beam search -----------------------------------------------------------------------------------


def test_beam_search_prefers_causally_consistent_path():
    # Per position the argmax is "a b", but the proxy has only ever seen "a c" / "d b".
    proxy = NGramProxy(vocab_size=5, order=2)
    proxy.extend([1, 3, 1, 3, 1, 3, 4, 2, 4, 2])
    lattice = lattice_of([[(1, 0.5), (4, 0.45)], [(2, 0.5), (3, 0.45)]])
    path = beam_search(lattice, proxy, [4, 2], beam_width=3, lam=0.5, eos_token_ids=[EOS])[0]
    assert path in ([1, 3], [4, 2])
    assert beam_search(lattice, proxy, [4, 2], beam_width=3, lam=1.0, eos_token_ids=[EOS])[0] == [1, 2]


@pytest.mark.parametrize("lam, path", [(0.8, [1, 1]), (0.2, [2, 2])])
def test_lambda_weighs_the_drafter_against_the_proxy(lam, path):
    # The drafter prefers 1 (0.9 against 0.1) at both positions; the proxy has only ever seen 2 follow 3 and 2.
    # lambda is the drafter's weight: at 0.8 the drafter decides, at 0.2 the proxy (at 0.5 both weigh the same,
    # which cannot tell lambda from 1 - lambda).
    proxy = NGramProxy(vocab_size=5, order=2)
    proxy.extend([3, 2, 2, 2, 3, 2, 2])
    lattice = lattice_of([[(1, 0.9), (2, 0.1)]] * 2)
    ranked = beam_search(lattice, proxy, [3], beam_width=4, lam=lam, eos_token_ids=[EOS])
    assert ranked[0] == path
    scores = {tuple(p): path_score(p, lattice, proxy, [3], lam) for p in all_paths(lattice)}
    assert max(scores, key=scores.get) == tuple(path)
    assert PathSearch(lam=lam, tau=0.95)(lattice_logprobs(lattice, 5), [3], proxy, [EOS]) == path


def lattice_logprobs(lattice: Lattice, vocab_size: int) -> torch.Tensor:
    """Drafter log-probabilities whose pruned lattice (with tau 0.95 here) is ``lattice``."""
    rows = torch.full((len(lattice), vocab_size), -30.0)
    for i, (tokens, lps) in enumerate(lattice):
        rows[i, tokens] = torch.tensor(lps)
    return rows


def test_beam_search_path_ends_at_eos():
    proxy = NGramProxy(vocab_size=4, order=2)
    proxy.extend([2, EOS, 2, EOS])
    lattice = lattice_of([[(2, 0.9)], [(EOS, 0.6), (3, 0.4)], [(3, 0.9)]])
    assert beam_search(lattice, proxy, [1], beam_width=2, lam=0.5, eos_token_ids=[EOS])[0] == [2, EOS]


def test_an_early_eos_does_not_win_by_being_short():
    # Summed log-probs, EOS at position 1 (0.3) would beat six likely tokens (0.7 each): -1.6 against -7.3
    # with a uniform proxy. Per token the long path is the better one; a better EOS still wins.
    proxy = NGramProxy(vocab_size=8, order=2)  # has seen nothing: uniform
    long_path = [[(EOS, 0.3), (5, 0.7)]] + [[(5, 0.7), (EOS, 0.3)]] * 5
    assert beam_search(lattice_of(long_path), proxy, [3], beam_width=3, lam=0.5, eos_token_ids=[EOS])[0] == [5] * 6
    weak_path = [[(EOS, 0.6), (5, 0.4)]] + [[(5, 0.4), (EOS, 0.6)]] * 5
    assert beam_search(lattice_of(weak_path), proxy, [3], beam_width=3, lam=0.5, eos_token_ids=[EOS])[0] == [EOS]


def test_short_history_gives_the_proxy_its_full_context():
    # A 1-token history under a 4-gram proxy: at the second position the context is (history, first token),
    # two tokens, never a wrapped-around slice of it. After "7 1" the proxy has seen only 3; after "1" alone,
    # mostly 4. The drafter cannot tell 3 from 4.
    proxy = NGramProxy(vocab_size=8, order=4)
    proxy.extend([7, 1, 3] * 3 + [6, 1, 4] * 5)
    lattice = lattice_of([[(1, 0.9), (2, 0.1)], [(3, 0.5), (4, 0.5)]])
    assert beam_search(lattice, proxy, [7], beam_width=3, lam=0.5, eos_token_ids=[EOS])[0] == [1, 3]
    assert beam_search(lattice, proxy, [6], beam_width=3, lam=0.5, eos_token_ids=[EOS])[0] == [1, 4]


@pytest.mark.parametrize("lam", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("seed", range(4))
def test_exhaustive_beam_search_ranks_every_path_by_its_mean_score(seed, lam):
    # A beam as wide as the lattice keeps every path: its ranking must be the definition's.
    g = torch.Generator().manual_seed(seed)
    corpus = CorpusNGram.count(torch.randint(0, 6, (4, 30), generator=g), vocab_size=6, order=4, min_count=1)
    proxy = NGramProxy(vocab_size=6, order=3, corpus=corpus, corpus_weight=0.6)
    proxy.extend(torch.randint(0, 6, (20,), generator=g).tolist())
    lattice = prune_lattice(
        torch.randn(4, 6, generator=g).mul(2).log_softmax(-1), tau=0.9, max_candidates=3, eos_token_ids=[EOS]
    )
    history = [int(torch.randint(0, 6, (1,), generator=g))]  # shorter than the orders
    paths = all_paths(lattice)
    ranked = beam_search(lattice, proxy, history, beam_width=len(paths), lam=lam, eos_token_ids=[EOS])
    assert sorted(ranked) == sorted(paths)
    scores = [path_score(p, lattice, proxy, history, lam) for p in ranked]
    assert scores == sorted(scores, reverse=True)
    assert scores == pytest.approx(sorted([path_score(p, lattice, proxy, history, lam) for p in paths], reverse=True))


def test_cps_disabled_is_argmax():
    lp = logprobs([[0.1, 0.6, 0.3], [0.7, 0.2, 0.1]])
    assert PathSearch(enabled=False)(lp, [], NGramProxy(3), [EOS]) == [1, 0]
