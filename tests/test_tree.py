"""Multi-path verification (diffuspec/tree.py): the tree's structure, mask and walk; one tree pass commits what
one-token-at-a-time decoding commits and leaves the cache as if only the accepted path had been fed; greedy output
is the target's own for draft_paths 1, 2 and 4; sampled output keeps the target's distribution; the cost policy
chooses between one path and a tree by expected tokens per second."""

import random
from collections import Counter

import pytest
import torch
import transformers as hf
from tiny_models import CONTEXT, EOS, PAD, _init, char_tokenizer, hf_greedy, make_diffusion_drafter, make_target
from test_architectures import _family
from test_sampling import NEW_TOKENS, SAMPLING, TRIALS, exact_sequence_distribution, goodness_of_fit

from diffuspec import DiffuSpec, DiffuSpecConfig, Draft, Drafter, SamplingParams
from diffuspec.caches import new_cache
from diffuspec.length import CostAwarePolicy, CostCurve, MachineCosts, StepFeedback
from diffuspec.tree import build_tree, supports_tree, tree_attention, verify_tree, walk

ALPHA = 1e-3


def test_paths_merge_into_a_prefix_tree():
    tree = build_tree([[5, 6, 7], [5, 6, 8], [5, 9], [4]])
    assert tree.tokens.tolist() == [5, 6, 7, 8, 9, 4]
    assert tree.parents == (-1, 0, 1, 1, 0, -1)
    assert tree.depths == (1, 2, 3, 3, 2, 1)
    assert tree.ranks == (0, 0, 0, 1, 2, 3)
    assert (tree.size, tree.depth) == (6, 3)
    assert tree.branch(3) == [0, 1, 3] and tree.branch(-1) == []
    single = build_tree([[3, 3, 1]])  # one path stays that path, repeats and all
    assert single.tokens.tolist() == [3, 3, 1] and single.parents == (-1, 0, 1)


def test_each_node_sees_the_context_the_root_and_its_ancestors():
    tree = build_tree([[5, 6], [5, 8], [4]])  # nodes: 0 = 5, 1 = 6 (under 0), 2 = 8 (under 0), 3 = 4
    mask, positions = tree_attention(tree, past_length=2, dtype=torch.float32, device=torch.device("cpu"))
    sees = (mask[0, 0] == 0).int().tolist()
    assert sees == [  # columns: 2 cached positions, root, nodes 0..3
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 1, 0],
        [1, 1, 1, 0, 0, 0, 1],
    ]
    assert positions.tolist() == [[2, 3, 4, 4, 3]]
    assert mask.min() == torch.finfo(torch.float32).min


def test_the_walk_follows_the_targets_tokens():
    tree = build_tree([[5, 6, 7], [5, 8, 9], [4]])  # nodes: 5 6 7 8 9 4
    # row r: the target's token after row r (row 0 the root); it takes 5, then 8 (not 6), then 9, then says 2
    choices = [5, 8, 0, 0, 9, 2, 0]
    assert walk(tree, choices) == ([0, 3, 4], 2)
    assert walk(tree, [1, 0, 0, 0, 0, 0, 0]) == ([], 1)  # nothing matches: the target's own token only


def _greedy_reference(target, prompt: list[int], count: int) -> list[int]:
    ids = list(prompt)
    for _ in range(count):
        ids.append(int(target(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def _eager_llama(vocab_size: int):
    target = make_target("llama", vocab_size, seed=3)
    target.config._attn_implementation = "eager"
    return target


def _full_gemma3(vocab_size: int):
    """A causal Gemma 3 with full-attention layers only (its sliding layers would fall back to one path)."""
    config = hf.Gemma3TextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=CONTEXT,
                                 layer_types=["full_attention"] * 2, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None)
    return _init(hf.Gemma3ForCausalLM(config), seed=4, scale=0.3)


TARGETS = {
    "llama": lambda v: make_target("llama", v, seed=0),
    "qwen2": lambda v: make_target("qwen2", v, seed=1),
    "gpt2": lambda v: make_target("gpt2", v, seed=2),
    "llama-eager": _eager_llama,
    "gemma3-full": _full_gemma3,
    "phi3": lambda v: _family("phi3", v),
    "qwen3": lambda v: _family("qwen3", v),
}


@pytest.mark.parametrize("arch", list(TARGETS))
@torch.no_grad()
def test_one_tree_pass_commits_what_sequential_decoding_does(arch):
    """The accepted branch is the third path's; afterwards the compacted cache gives the same next logits as a
    cache that only ever saw the committed tokens."""
    tokenizer = char_tokenizer()
    target = TARGETS[arch](len(tokenizer))
    prompt = tokenizer("the cat sat")["input_ids"]
    ref = _greedy_reference(target, prompt, 6)
    wrong = lambda t: (t + 1) % len(tokenizer)  # noqa: E731
    paths = [[wrong(ref[0]), ref[1]], [ref[0], wrong(ref[1]), ref[2]], [ref[0], ref[1], ref[2], wrong(ref[3])],
             [ref[0], ref[1], wrong(ref[2])]]
    tree = build_tree(paths)
    cache = new_cache(target)
    assert supports_tree(target, cache)
    target(input_ids=torch.tensor([prompt[:-1]]), past_key_values=cache, use_cache=True)
    verdict = verify_tree(target, cache, torch.tensor(prompt[-1:]), tree, SamplingParams(), seed=0, generated=0)
    committed = [*tree.tokens[verdict.accepted_nodes].tolist(), verdict.next_token]
    assert committed == ref[:4] and verdict.rank == 2
    assert cache.get_seq_length() == len(prompt) - 1 + 1 + 3  # context, root, three accepted nodes
    after = target(input_ids=torch.tensor([[committed[-1]]]), past_key_values=cache, use_cache=True).logits[0, -1]
    fresh = target(input_ids=torch.tensor([prompt + committed])).logits[0, -1]
    torch.testing.assert_close(after, fresh, atol=1e-4, rtol=1e-4)


class RunnerUpDrafter(Drafter):
    """Knows the target's greedy continuation and puts it first at two positions in three and second (behind a
    decoy) at the rest: one path stops at the first runner-up, a tree of several paths reaches past it."""

    def __init__(self, prompt_length: int, reference: list[int], vocab_size: int) -> None:
        self.start, self.reference, self.vocab_size = prompt_length, reference, vocab_size
        coin = random.Random(0)
        self.first = [coin.random() < 2 / 3 for _ in reference]

    def propose(self, context, k, sampling=None, generator=None) -> Draft:
        at = context.numel() - self.start
        probs = torch.full((k, self.vocab_size), 0.2 / (self.vocab_size - 2))
        for i in range(k):
            true = self.reference[min(at + i, len(self.reference) - 1)]
            decoy = (true + 1) % self.vocab_size
            probs[i, true], probs[i, decoy] = (0.6, 0.2) if self.first[min(at + i, len(self.first) - 1)] else (0.35, 0.45)
        return Draft(logprobs=probs.log(), forwards=1)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_greedy_output_is_the_targets_own_for_any_number_of_paths(arch, targets, drafter, tokenizer):
    target = targets[arch]
    prompt = tokenizer("the quick brown fox")["input_ids"]
    reference = hf_greedy(target, prompt, 48)
    mat = {}
    for paths in (1, 2, 4):
        for config in (DiffuSpecConfig(draft_paths=paths), DiffuSpecConfig(draft_paths=paths, length_policy="adl")):
            assert DiffuSpec(target, drafter, tokenizer, config).generate(prompt, max_new_tokens=48).token_ids == reference
        oracle = RunnerUpDrafter(len(prompt), reference, len(tokenizer))
        engine = DiffuSpec(target, oracle, tokenizer, DiffuSpecConfig(draft_paths=paths, draft_length=6, cps_lambda=1.0))
        out = engine.generate(prompt, max_new_tokens=48)
        assert out.token_ids == reference
        mat[paths] = out.stats.mean_accepted_tokens
        if paths > 1:
            assert any(out.stats.accepted_ranks)  # branches other than the best one were accepted
            assert max(out.stats.tree_sizes) > max(out.stats.draft_lengths)
        else:
            assert not any(out.stats.accepted_ranks) and out.stats.tree_sizes == out.stats.draft_lengths
    assert mat[4] > mat[2] > mat[1]


def test_a_sliding_window_target_verifies_one_path(tokenizer, drafter):
    """A sliding-window layer keeps W - 1 positions and gets its windowed mask from the model: no tree there
    (tree.py), so draft_paths falls back to single paths, still lossless."""
    target = _family("mistral", len(tokenizer))
    assert not supports_tree(target, new_cache(target))
    prompt = tokenizer("the quick fox")["input_ids"]
    out = DiffuSpec(target, drafter, tokenizer, DiffuSpecConfig(draft_paths=4)).generate(prompt, max_new_tokens=24)
    assert out.token_ids == hf_greedy(target, prompt, 24)
    assert out.stats.tree_sizes == out.stats.draft_lengths


def test_sampled_trees_follow_the_target_distribution():
    """Gumbel-max verification of a tree is greedy verification of log p + g (tree.py): the chi-square check of
    test_sampling.py with three paths per tree."""
    tokenizer = char_tokenizer("abc")
    target, drafter = make_target("llama", len(tokenizer), seed=11), make_diffusion_drafter(len(tokenizer), seed=12)
    engine = DiffuSpec(target, drafter, tokenizer, DiffuSpecConfig(draft_paths=3, draft_length=3))
    prompt = tokenizer("ab")["input_ids"]
    exact = exact_sequence_distribution(target, prompt, engine.eos_token_ids, SAMPLING)
    samples, ranks, sizes = Counter(), 0, []
    for seed in range(TRIALS["point-mass"]):
        out = engine.generate(prompt, max_new_tokens=NEW_TOKENS, seed=seed, **SAMPLING)
        samples[tuple(out.token_ids)] += 1
        ranks += sum(r > 0 for r in out.stats.accepted_ranks)
        sizes += out.stats.tree_sizes
    assert ranks > 0 and max(sizes) > 3  # real trees, and branches other than the best were accepted
    assert goodness_of_fit(samples, exact) > ALPHA


def _policy(max_paths: int, verify_seconds) -> CostAwarePolicy:
    costs = MachineCosts.empty()
    for size in (1, 2, 4, 8, 16, 32, 64):
        costs.verify.observe(size, verify_seconds(size))
    costs.other.observe(1, 0.0)
    policy = CostAwarePolicy(costs, "diffuspec", k_min=1, k_max=8, search=True, adaptive_search=False,
                             max_paths=max_paths)
    policy.draft_cost.observe(8, 1e-3)
    policy.search_cost.observe(8, 1e-4)
    return policy


@pytest.mark.parametrize("verify_seconds, tree_wins", [
    (lambda size: 0.01, True),  # verified tokens nearly free (a GPU): the tree's extra tokens pay
    (lambda size: 0.01 * size, False),  # every verified token costs as much as a step (a CPU at worst)
])
def test_the_cost_policy_keeps_the_tree_only_where_it_pays(verify_seconds, tree_wins):
    policy = _policy(4, verify_seconds)
    assert policy.choose(8).paths == 4  # the first step explores the tree
    for _ in range(40):  # the tree accepts 3 of 8 where its best path alone accepts 1
        policy.observe(StepFeedback(8, 3, 8, None, 1e-3, 1e-4, tree_size=20, best_path_match=1))
    choices = [policy.choose(8).paths for _ in range(16)]
    assert Counter(choices)[4 if tree_wins else 1] >= 14  # the loser only as a rare probe
    assert _policy(1, verify_seconds).choose(8).paths == 1


def test_a_tree_of_one_path_stays_a_path():
    costs = MachineCosts(CostCurve(), {}, {}, CostCurve())
    policy = CostAwarePolicy(costs, "diffuspec", k_min=1, k_max=8, search=False, adaptive_search=False, max_paths=4)
    assert policy.choose(8).paths == 1  # no path search, no paths to merge
