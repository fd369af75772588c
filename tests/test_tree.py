"""Tree verification (diffuspec/tree.py): the tree grown from the drafter's marginals is the best prefix-closed
set of nodes, within a limit on its paths; the tree's structure, mask and walk; one tree pass commits what
one-token-at-a-time decoding commits and leaves the cache as if only the accepted path had been fed; greedy
output is the target's own for one path, draft_paths=4 and fixed node budgets; sampled output keeps the target's
distribution; the config's tree knobs; the cost policy sizes the tree by expected tokens per second."""

import itertools
import math
import random
from collections import Counter

import pytest
import torch
import transformers as hf
from test_architectures import _family
from test_sampling import NEW_TOKENS, SAMPLING, TRIALS, exact_sequence_distribution, goodness_of_fit
from tiny_models import CONTEXT, EOS, PAD, _init, char_tokenizer, hf_greedy, make_diffusion_drafter, make_target

from diffuspec import DiffuSpec, DiffuSpecConfig, DiffuSpecError, Draft, Drafter, SamplingParams
from diffuspec.caches import cache_kwargs, new_cache
from diffuspec.length import CostAwarePolicy, MachineCosts, StepFeedback
from diffuspec.tree import (
    SINGLE_PATH,
    TreeLimits,
    build_tree,
    grow_tree,
    supports_tree,
    tree_attention,
    verify_tree,
    walk,
)

ALPHA = 1e-3


def _all_nodes(probs: torch.Tensor, spine: list[int], candidates: int) -> dict[tuple[int, ...], float]:
    """Every node grow_tree may choose from, by brute force: each token path of at most k tokens whose tokens are
    their position's top candidates (or the spine's own while on the spine), with its value."""
    top = [row.topk(candidates).indices.tolist() for row in probs]
    nodes: dict[tuple[int, ...], float] = {}
    for depth in range(1, len(top) + 1):
        for path in itertools.product(*(range(probs.shape[1]) for _ in range(depth))):
            on_spine = [list(path[:i]) == spine[:i] for i in range(depth)]
            if all(t in top[i] or (on_spine[i] and i < len(spine) and t == spine[i]) for i, t in enumerate(path)):
                nodes[path] = math.prod(float(probs[i, t]) for i, t in enumerate(path))
    return nodes


def _grown_nodes(grown) -> list[tuple[int, ...]]:
    paths = []
    for i in range(len(grown.tokens)):
        path, node = [], i
        while node >= 0:
            path.append(grown.tokens[node])
            node = grown.parents[node]
        paths.append(tuple(path[::-1]))
    return paths


@pytest.mark.parametrize("seed", range(4))
def test_the_grown_tree_is_the_spine_plus_the_best_prefix_closed_nodes(seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.randn(4, 5, generator=g).mul(1.5).softmax(-1)
    spine = [int(t) for t in torch.randint(0, 5, (3,), generator=g)]  # CPS may take tokens outside the top 3
    values = _all_nodes(probs, spine, candidates=3)
    branch_values = sorted((v for path, v in values.items() if list(path) != spine[: len(path)]), reverse=True)
    for budget in (0, 1, 5, 12, 200):
        grown = grow_tree(probs.log(), spine, budget, candidates=3)
        nodes = _grown_nodes(grown)
        assert nodes[:3] == [tuple(spine[:1]), tuple(spine[:2]), tuple(spine)]
        assert len(set(nodes)) == len(nodes) == 3 + min(budget, len(branch_values))
        assert all(path[:-1] in nodes[:i] or len(path) == 1 for i, path in enumerate(nodes))  # parents first
        assert list(grown.branch_values) == pytest.approx(branch_values[:budget])  # the best ones, best first
        assert all(grown.values[i] == pytest.approx(values[path]) for i, path in enumerate(nodes))


def _best_first(values: dict[tuple[int, ...], float], spine: list[int], budget: int,
                 paths: int | None) -> list[tuple[int, ...]]:
    """grow_tree's rule by brute force: every node in order of value, taken while the budget lasts if its parent
    is in the tree and, when it opens a path (its parent already has a child), the tree has fewer than ``paths``."""
    tree, leaves = [tuple(spine[:i]) for i in range(1, len(spine) + 1)], 1
    for path, _ in sorted(values.items(), key=lambda item: -item[1]):
        if len(tree) == len(spine) + budget:
            break
        if path in tree or (len(path) > 1 and path[:-1] not in tree):
            continue
        opens = len(path) == 1 or any(node[:-1] == path[:-1] for node in tree)
        if opens and leaves == paths:
            continue
        leaves += opens
        tree.append(path)
    return tree


@pytest.mark.parametrize("seed", range(4))
def test_a_path_limit_keeps_the_best_nodes_that_fit(seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.randn(4, 5, generator=g).mul(1.5).softmax(-1)
    spine = [int(t) for t in torch.randint(0, 5, (3,), generator=g)]
    values = _all_nodes(probs, spine, candidates=3)
    for budget, paths in itertools.product((0, 1, 5, 12, 200), (1, 2, 3, None)):
        nodes = _grown_nodes(grow_tree(probs.log(), spine, budget, paths=paths, candidates=3))
        assert nodes == _best_first(values, spine, budget, paths)
        leaves = [node for node in nodes if not any(other[:-1] == node for other in nodes)]
        assert len(leaves) <= (paths or math.inf)
    # one path: only the spine's own continuation past its last token (k = 4 > 3 spine tokens)
    assert [len(node) for node in _grown_nodes(grow_tree(probs.log(), spine, 200, paths=1, candidates=3))] == [1, 2, 3, 4]


def test_growth_is_deterministic_on_ties_and_stops_at_eos():
    """Ties go to the node offered first (the shallower parent, then the likelier token); nothing follows EOS."""
    probs = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.5, 0.5, 0.0, 0.0], [0.5, 0.25, 0.25, 0.0]])
    grown = grow_tree(probs.log(), [0, 0, 0], 4, candidates=3)
    # spine values 1/2, 1/4, 1/8; then 1 and 2 at the root and 1 after [0] (1/4 each), then [1, 0], the first
    # 1/8 offered (when [1] was chosen)
    assert grown.branch_values == (0.25, 0.25, 0.25, 0.125)
    assert grown.tokens[3:] == (1, 2, 1, 0) and grown.parents[3:] == (-1, -1, 0, 3)
    assert grow_tree(probs.log(), [0, 0, 0], 4, candidates=3) == grown
    eos = 3
    probs = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.0, 0.5], [0.5, 0.25, 0.25, 0.0]])
    ended = grow_tree(probs.log(), [0, eos], 50, candidates=3, ends={eos})  # the spine ends with EOS
    assert eos in ended.tokens[2:]  # a branch may end too
    assert all(parent < 0 or ended.tokens[parent] != eos for parent in ended.parents)  # nothing after EOS
    assert max(len(path) for path in _grown_nodes(ended)) == 3  # at most k deep


def test_tree_paths_put_the_spine_first():
    probs = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.5, 0.5, 0.0, 0.0], [0.5, 0.25, 0.25, 0.0]])
    grown = grow_tree(probs.log(), [0, 0, 0], 4, candidates=3)
    assert grown.paths(0) == [[0, 0, 0]]
    assert grown.paths(4) == [[0, 0, 0], [2], [0, 1], [1, 0]]  # the leaves, in the order chosen
    tree = build_tree(grown.paths(4))
    assert tree.size == 7 and tree.tokens[:3].tolist() == [0, 0, 0] and tree.ranks == (0, 0, 0, 1, 2, 3, 3)


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
    wrong = lambda t: (t + 1) % len(tokenizer)
    paths = [[wrong(ref[0]), ref[1]], [ref[0], wrong(ref[1]), ref[2]], [ref[0], ref[1], ref[2], wrong(ref[3])],
             [ref[0], ref[1], wrong(ref[2])]]
    tree = build_tree(paths)
    cache = new_cache(target)
    assert supports_tree(target, cache)
    target(input_ids=torch.tensor([prompt[:-1]]), use_cache=True, **cache_kwargs(target, cache))
    verdict = verify_tree(target, cache, torch.tensor(prompt[-1:]), tree, SamplingParams(), seed=0, generated=0)
    committed = [*tree.tokens[verdict.accepted_nodes].tolist(), verdict.next_token]
    assert committed == ref[:4] and verdict.rank == 2
    assert cache.get_seq_length() == len(prompt) - 1 + 1 + 3  # context, root, three accepted nodes
    after = target(input_ids=torch.tensor([[committed[-1]]]), use_cache=True, **cache_kwargs(target, cache)).logits[0, -1]
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


# (draft_paths, tree_branches): one path; the 4 paths with their default node budget; node budgets that
# leave the paths unlimited (M added nodes make at most M + 1 paths)
TREES = [(1, None), (4, None), (5, 4), (13, 12)]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_greedy_output_is_the_targets_own_for_any_tree(arch, targets, drafter, tokenizer):
    target = targets[arch]
    prompt = tokenizer("the quick brown fox")["input_ids"]
    reference = hf_greedy(target, prompt, 48)
    mat = {}
    for paths, branches in TREES:
        for policy in ("cost", "adl"):
            config = DiffuSpecConfig(draft_paths=paths, tree_branches=branches, length_policy=policy)
            assert DiffuSpec(target, drafter, tokenizer, config).generate(prompt, max_new_tokens=48).token_ids == reference
        oracle = RunnerUpDrafter(len(prompt), reference, len(tokenizer))
        config = DiffuSpecConfig(draft_paths=paths, tree_branches=branches, draft_length=6, cps_lambda=1.0,
                                 prompt_lookup_first=False)
        out = DiffuSpec(target, oracle, tokenizer, config).generate(prompt, max_new_tokens=48)
        assert out.token_ids == reference
        mat[paths, branches] = out.stats.mean_accepted_tokens
        assert max(out.stats.accepted_ranks) < paths  # a path's rank is its index among the tree's paths
        if paths > 1:
            assert any(out.stats.accepted_ranks)  # branches off the draft path were accepted
            if branches:  # the fixed length's policy verifies all the nodes offered
                assert max(out.stats.tree_sizes) == 6 + branches
            else:  # 4 paths may branch below the root, so they need not fill the 3 x 6 nodes of full paths
                assert 6 < max(out.stats.tree_sizes) <= 6 + (paths - 1) * 6
        else:
            assert out.stats.tree_sizes == out.stats.draft_lengths
    assert mat[13, 12] > mat[5, 4] > mat[1, None] and mat[4, None] > mat[1, None]


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
    test_sampling.py with trees of up to 4 paths (up to 9 nodes added to each 3-token draft path)."""
    tokenizer = char_tokenizer("abc")
    target, drafter = make_target("llama", len(tokenizer), seed=11), make_diffusion_drafter(len(tokenizer), seed=12)
    engine = DiffuSpec(target, drafter, tokenizer, DiffuSpecConfig(draft_paths=4, draft_length=3))
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


UP_TO_16 = TreeLimits(paths=17, branches=16)  # 16 added nodes make at most 17 paths: no path limit


def _policy(verify_seconds, tree_limits: TreeLimits = UP_TO_16) -> CostAwarePolicy:
    costs = MachineCosts.empty()
    for size in (1, 2, 4, 8, 16, 32, 64):
        costs.verify.observe(size, verify_seconds(size))
    costs.other.observe(1, 0.0)
    policy = CostAwarePolicy(costs, "diffuspec", k_min=1, k_max=8, search=True, adaptive_search=False,
                             tree_limits=tree_limits)
    policy.draft_cost.observe(8, 1e-3)
    policy.search_cost.observe(8, 1e-4)
    return policy


VALUES = [0.5, 0.3, 0.2, 0.1, 0.05, 0.01]


FREE, LINEAR, MODERATE = (lambda size: 0.01), (lambda size: 0.01 * size), (lambda size: 0.01 + 0.001 * size)


@pytest.mark.parametrize("verify_seconds, values, taken", [
    (FREE, VALUES, len(VALUES)),  # verified tokens free (a GPU at small sizes): every branch pays
    # each verified token costs the same (a CPU at worst): a branch pays while its value beats the path's
    # expected tokens per verified token, here E(8) / 9 = 2 / 9 (prior acceptance 1/2)
    (LINEAR, VALUES, 2),
    (LINEAR, [0.2, 0.1, 0.05], 0),
    (MODERATE, VALUES, 3),
])
def test_the_cost_policy_takes_the_branches_that_pay(verify_seconds, values, taken):
    policy = _policy(verify_seconds)
    # the most it may use; it sizes the tree once it sees the values
    assert policy.choose(8).tree_limits == UP_TO_16
    path_tokens = policy.tree_branches(8, [])[1]
    assert path_tokens == pytest.approx(2.0, abs=0.01)
    branches, predicted = policy.tree_branches(8, values)
    assert branches == taken
    assert predicted == pytest.approx(path_tokens + sum(values[:taken]))  # calibration 1 so far
    assert _policy(verify_seconds, SINGLE_PATH).choose(8).tree_limits.budget(8) == 0


def test_the_cost_policy_stops_branching_when_branches_deliver_less_than_their_values():
    policy = _policy(MODERATE)
    policy.choose(8)
    assert policy.tree_branches(8, VALUES)[0] == 3
    for _ in range(40):  # trees whose branches never carry an accepted token: the path alone accepted as much
        policy.tree_branches(8, VALUES)
        policy.observe(StepFeedback(8, 3, 8, None, 1e-3, 1e-4, tree_size=10, best_path_match=3))
    assert policy.tree_branches(8, VALUES)[0] == 0


def test_draft_paths_and_tree_branches_size_the_tree():
    assert TreeLimits().budget(8) == 0  # one path: no tree
    assert TreeLimits(paths=4).budget(8) == 24  # room for 4 full-depth paths
    assert TreeLimits(paths=4, branches=5).budget(8) == 5
    for bad, named in [({"draft_paths": 0}, "draft_paths must be >= 1"),
                       ({"draft_paths": 4, "tree_branches": 0}, "tree_branches must be >= 1"),
                       ({"tree_branches": 16}, "set draft_paths > 1")]:
        with pytest.raises(DiffuSpecError, match=named):
            DiffuSpecConfig(**bad)
