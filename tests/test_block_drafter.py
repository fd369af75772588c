"""The block drafter (``diffuspec train-drafter``): made of the target's own layers, reading its hidden states,
drafting over a reduced vocabulary; lossless in the engine, exact where it should be (a drafter of all of the
target's layers predicts the first draft as the target does), stored without the target's embeddings, trained
end to end on a tiny target (resumable)."""

from __future__ import annotations

import json
import math
import string
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from tiny_models import CONTEXT, EOS, MASK, PAD, _init, char_tokenizer, hf_greedy, make_target
from transformers import AutoModel, Gemma3ForCausalLM, Gemma3TextConfig

from diffuspec import DiffuSpec, DiffuSpecConfig, DiffuSpecError
from diffuspec.adapters import bound_drafter_factory
from diffuspec.adapters.block_drafter import BlockDrafter, BlockDrafterModel, block_drafter_from_target
from diffuspec.training.blocks import accepted_lengths, decayed_ce, make_batch, streak_objective
from diffuspec.training.target_text import TargetRows
from diffuspec.training.vocab import coverage, draft_vocabulary, index_of

PROMPTS = ["the cat sat on", "a", "hello world, hello there, the cat sat on the mat again"]


def gemma_target(vocab_size: int, seed: int = 0) -> Gemma3ForCausalLM:
    """A tiny Gemma 3 with Gemma's layer pattern: sliding-window layers (a window of 6, shorter than the
    prompts) and a global one, one KV head, query/key norms."""
    config = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=CONTEXT, sliding_window=6,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"], eos_token_id=EOS,
        pad_token_id=PAD, bos_token_id=None,
    )
    return _init(Gemma3ForCausalLM(config), seed, scale=0.3)


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def target(request, tokenizer):
    return make_target("llama", len(tokenizer)) if request.param == "llama" else gemma_target(len(tokenizer))


def whole_copy(target, block_size: int = 4) -> BlockDrafterModel:
    """A drafter holding every layer of ``target``, each reading the target's input to that layer."""
    layers = list(range(target.config.num_hidden_layers))
    return block_drafter_from_target(target, layers, draft_ids=torch.arange(target.config.vocab_size),
                                     mask_token_id=MASK, block_size=block_size)


def fresh_drafter(target, draft_ids: torch.Tensor, seed: int = 5, carry_state: bool = True) -> BlockDrafterModel:
    """One fresh (random) layer of the target's shape over a reduced draft vocabulary, carrying the target's state
    before the anchor into the block (random weights: the carried state changes every draft)."""
    n = target.config.num_hidden_layers
    model = block_drafter_from_target(target, [n - 1], draft_ids=draft_ids, mask_token_id=MASK, block_size=5,
                                      copy=False, carry_state=carry_state)
    return _init(model, seed, scale=0.3)


@pytest.mark.parametrize("carry_state", [False, True], ids=["plain", "carry-state"])
def test_a_drafter_of_all_the_targets_layers_drafts_its_next_token(target, tokenizer, carry_state):
    """The anchor row sees only committed tokens, and each copied layer reads the target's own input to it, so
    its prediction is the target's: every step accepts its first draft (a tap one layer off, a position or a cache
    not trimmed after a rejection would break this). The carried state's projection starts at zero."""
    model = whole_copy(target)
    if carry_state:
        layers = list(range(target.config.num_hidden_layers))
        model = block_drafter_from_target(target, layers, draft_ids=torch.arange(target.config.vocab_size),
                                          mask_token_id=MASK, block_size=4, carry_state=True)
    engine = DiffuSpec(target, BlockDrafter(target, model), tokenizer,
                       DiffuSpecConfig(cps=False, draft_length=4, prompt_lookup_first=False))
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        out = engine.generate(ids, 40)
        assert out.token_ids == hf_greedy(target, ids, 40)
        per_position = out.stats.summary()["per_position_acceptance"]
        assert per_position[0] == 1.0, per_position


@pytest.mark.parametrize("config", [{"cps": False, "draft_length": 5}, {"cps": True, "k_max": 5}],
                         ids=["argmax", "cps"])
def test_output_is_the_targets_with_a_random_reduced_vocabulary_drafter(target, tokenizer, config):
    draft_ids = torch.arange(0, len(tokenizer), 2)  # half the tokens: most drafts are rejected somewhere
    engine = DiffuSpec(target, BlockDrafter(target, fresh_drafter(target, draft_ids)), tokenizer,
                       DiffuSpecConfig(**config, prompt_lookup_first=False))
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        assert engine.generate(ids, 30).token_ids == hf_greedy(target, ids, 30)
    ids = tokenizer("the cat")["input_ids"]
    for seed in range(2):
        sampled = engine.generate(ids, 24, temperature=0.9, seed=seed)
        assert sampled.token_ids == engine.generate(ids, 24, temperature=0.9, seed=seed, mode="ar").token_ids


def test_drafts_stay_inside_the_draft_vocabulary(tokenizer):
    target = make_target("llama", len(tokenizer))
    draft_ids = torch.tensor([1, 4, 5, 9, 12, 20])
    drafter = BlockDrafter(target, fresh_drafter(target, draft_ids))
    context = torch.tensor(tokenizer("the cat")["input_ids"])
    with torch.inference_mode():
        out = target(context[None, :-1], output_hidden_states=True)
    drafter.observe_hidden_states(torch.cat([out.hidden_states[i][0] for i in drafter.hidden_layers], dim=-1))
    logprobs = drafter.propose(context, 5).logprobs
    assert logprobs.shape == (5, len(tokenizer))
    finite = torch.isfinite(logprobs).any(dim=0).nonzero().flatten()
    assert finite.tolist() == draft_ids.tolist()
    assert torch.allclose(logprobs.exp().sum(dim=-1), torch.ones(5))


def test_drafter_cache_equals_recomputation(target, tokenizer):
    """Context keys and values added a step at a time (with drafting, and its rollback, in between) give the block
    the same distributions as all the context at once."""
    ids = tokenizer("hello world, hello there")["input_ids"]
    context = torch.tensor(ids)
    model = fresh_drafter(target, torch.arange(len(tokenizer)))
    stepped, fresh = BlockDrafter(target, model), BlockDrafter(target, model)
    with torch.inference_mode():
        out = target(context[None, :-1], output_hidden_states=True)
    states = torch.cat([out.hidden_states[i][0] for i in stepped.hidden_layers], dim=-1)
    for cut in (3, 9):
        stepped.observe_hidden_states(states[stepped.cached : cut])
        stepped.propose(context[: cut + 1], 5)
    stepped.observe_hidden_states(states[stepped.cached :])
    fresh.observe_hidden_states(states)
    torch.testing.assert_close(stepped.propose(context, 5).logprobs, fresh.propose(context, 5).logprobs,
                               atol=1e-4, rtol=1e-4)


def test_saved_drafter_holds_only_its_own_weights(tmp_path, tokenizer):
    target = gemma_target(len(tokenizer))
    model = fresh_drafter(target, torch.arange(0, len(tokenizer), 3))
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
    assert not any(len(tokenizer) in shape for name, shape in shapes.items() if name != "draft_ids"), shapes
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, BlockDrafterModel)
    assert torch.equal(loaded.draft_ids, model.draft_ids)
    make = bound_drafter_factory(loaded, target)  # converted to the target's dtype, paired with it
    engine = DiffuSpec(target, make(), tokenizer, DiffuSpecConfig(cps=False, draft_length=5))
    ids = tokenizer("the cat sat")["input_ids"]
    assert engine.generate(ids, 20).token_ids == hf_greedy(target, ids, 20)


def test_a_drafter_for_another_target_is_refused(tokenizer):
    other = make_target("llama", len(tokenizer))
    wider = block_drafter_from_target(gemma_target(len(tokenizer)), [2], draft_ids=torch.arange(10),
                                      mask_token_id=MASK)
    wider.config.target_vocab_size = len(tokenizer) + 1
    with pytest.raises(ValueError, match="train-drafter"):
        BlockDrafter(other, wider)


# ----- training pieces on hand-built inputs -----------------------------------------------------------------


def test_streak_objective_counts_the_expected_streak_and_breaks_it_at_unreachable_tokens():
    half = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    every = torch.ones(1, 3, dtype=torch.bool)
    none = torch.zeros(1, 3, dtype=torch.bool)
    _, expected = streak_objective(half, every, none)
    assert math.isclose(float(expected), 0.5 + 0.25 + 0.125, rel_tol=1e-6)
    broken = torch.tensor([[False, True, False]])  # the target's second token is outside the draft vocabulary
    loss, expected = streak_objective(half, every & ~broken, broken)
    assert math.isclose(float(expected), 0.5, rel_tol=1e-6)
    past_end = torch.tensor([[True, True, False]])  # a row that ends after two tokens: no break, no term
    _, expected = streak_objective(half, past_end, none)
    assert math.isclose(float(expected), 0.75, rel_tol=1e-6)
    # the stable loss weighs a position by the chance of reaching it (+ 0.1), so an early failure costs more
    early = torch.log(torch.tensor([[0.1, 0.9, 0.9]]))
    late = torch.log(torch.tensor([[0.9, 0.9, 0.1]]))
    assert float(streak_objective(early, every, none)[0]) > float(streak_objective(late, every, none)[0])


def test_decayed_ce_weighs_early_positions_more_and_skips_unlearnable_ones():
    log_q = torch.log(torch.tensor([[0.5, 0.25, 0.125]]))
    every = torch.ones(1, 3, dtype=torch.bool)
    weights = torch.exp(-torch.arange(3) / 2.0)
    expected = -(log_q[0] * weights).sum() / weights.sum()
    assert math.isclose(float(decayed_ce(log_q, every, gamma=2.0)), float(expected), rel_tol=1e-6)
    first_only = torch.tensor([[True, False, False]])
    assert math.isclose(float(decayed_ce(log_q, first_only, gamma=2.0)), math.log(2), rel_tol=1e-6)


def test_accepted_lengths_stop_at_the_first_disagreement_or_the_rows_end():
    predicted = torch.tensor([[1, 2, 3, 4], [1, 9, 3, 4], [1, 2, 3, 4]])
    labels = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
    real = torch.tensor([[True] * 4, [True] * 4, [True, True, False, False]])
    assert accepted_lengths(predicted, labels, real).tolist() == [4, 1, 2]


def test_draft_vocabulary_ranks_the_targets_output_then_the_corpus():
    output = torch.tensor([0, 5, 0, 9, 0, 1, 0, 0])
    corpus = torch.tensor([100, 0, 3, 0, 7, 0, 1, 0])
    ids = draft_vocabulary(output, 4, corpus_counts=corpus, always=[7])
    assert ids.tolist() == [1, 3, 5, 7]  # 7 forced; then 3, 1, 5 by output counts, before any corpus count
    ids = draft_vocabulary(output, 5, corpus_counts=corpus)
    assert ids.tolist() == [0, 1, 3, 4, 5]  # unseen in the output: the corpus decides
    assert coverage(ids, [0, 1, 2, 3], 8) == 0.75
    assert index_of(ids, 8).tolist() == [0, 1, -1, 2, 3, 4, -1, -1]


def test_make_batch_blocks_see_only_what_the_loop_shows_them():
    rows = TargetRows((0,), [[10, 11, 12, 13, 14, 15, 16]], [3], [torch.randn(6, 2)])
    batch = make_batch(rows, [0], blocks=2, block_size=3, shifted=True, mask_id=99,
                       generator=torch.Generator().manual_seed(0))
    anchors = batch.block_positions[0, ::3]
    width = 6
    for j, anchor in enumerate(anchors.tolist()):
        assert 2 <= anchor <= 5  # from the last prompt token to the last but one token
        rows_j = batch.sees[0, 3 * j : 3 * j + 3]
        assert rows_j[:, :width].sum(dim=-1).tolist() == [anchor] * 3  # the states of the positions before it
        block = rows_j[:, width:].view(3, 2, 3)[:, j]
        assert block.tolist() == [[True, False, False], [True, True, True], [True, True, True]]
        assert rows_j[:, width:].view(3, 2, 3)[:, 1 - j].sum() == 0  # never another block
        assert batch.block_tokens[0, 3 * j : 3 * j + 3].tolist() == [rows.tokens[0][anchor], 99, 99]
        expected = [rows.tokens[0][p] if p < 7 else None for p in range(anchor + 1, anchor + 4)]
        labels, real = batch.labels[0, j].tolist(), batch.real[0, j].tolist()
        assert [label if ok else None for label, ok in zip(labels, real)] == expected


# ----- the recipe end to end ---------------------------------------------------------------------------------


def test_train_drafter_end_to_end_and_resume(tmp_path, monkeypatch):
    """A tiny target with a character tokenizer: the drafter trains, saves its own weights with the n-gram table,
    model card and metrics, drafts losslessly when loaded back; a rerun resumes from the cached rows and the
    checkpoint instead of generating again."""
    from diffuspec.training import target_text as text_module
    from diffuspec.training.drafter import DrafterRecipe, train_drafter
    from diffuspec.training.target_text import TextRecipe

    tokenizer = char_tokenizer(string.ascii_letters + string.digits + " .,:()=_'\"\n")
    target = gemma_target(len(tokenizer))
    recipe = DrafterRecipe(layers=1, block_size=4, draft_vocab=40, steps=3, batch_rows=2, blocks_per_row=2,
                           checkpoint_every=1, loss="ce", carry_state=True,
                           text=TextRecipe(raw_prompts=12, chat_prompts=0, prompt_max=10, continuation=10,
                                           eval_raw_prompts=4, eval_chat_prompts=0, corpus_bytes=1_000_000, chunk=8))
    metrics = train_drafter(target, tokenizer, tmp_path / "drafter", recipe, target_name="tiny")
    out = tmp_path / "drafter"
    assert {"config.json", "model.safetensors", "cps_ngram.safetensors", "README.md", "metrics.json"} <= {
        p.name for p in out.iterdir()}
    assert not (out / "tokenizer.json").exists()  # the target's tokenizer is the target's
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["own_parameters"] == metrics["own_parameters"]
    assert 0 < saved["data"]["draft_vocab_coverage_heldout"] <= 1
    assert len(saved["heldout"]["per_position_acceptance"]) == 4
    assert 0 <= saved["heldout"]["first_in_top"]["1"] <= saved["heldout"]["first_in_top"]["8"] <= 1
    model = AutoModel.from_pretrained(out)
    assert model.config.copied_from == [2] and model.config.context_layers == [2]
    engine = DiffuSpec(target, bound_drafter_factory(model, target)(), tokenizer, DiffuSpecConfig(k_max=4))
    ids = tokenizer("def f(x):")["input_ids"]
    assert engine.generate(ids, 16).token_ids == hf_greedy(target, ids, 16)

    def generating_again(*args, **kwargs):
        raise AssertionError("the rows were cached: nothing to generate")

    monkeypatch.setattr(text_module, "greedy_with_states", generating_again)
    lines = []
    train_drafter(target, tokenizer, out, recipe, target_name="tiny", log=lines.append)
    assert any("resumed at step 3" in line for line in lines)
    # another recipe in the same work folder is refused, not silently resumed from the first one's weights
    with pytest.raises(DiffuSpecError, match="another recipe or other data: delete it"):
        train_drafter(target, tokenizer, out, replace(recipe, lr=1e-3), target_name="tiny", log=lines.append)


# ----- token trees on a sliding-window target ----------------------------------------------------------------


def test_trees_on_a_sliding_window_target_are_lossless(tokenizer, drafter):
    """Gemma 3's sliding-window layers take a mask of their own and keep their window through the compaction: a
    tree of up to 4 paths is verified (more nodes than draft tokens), and the output stays the target's, also past
    the window (6 here)."""
    from diffuspec.caches import new_cache
    from diffuspec.tree import supports_tree

    target = gemma_target(len(tokenizer))
    assert supports_tree(target, new_cache(target))
    engine = DiffuSpec(target, drafter, tokenizer, DiffuSpecConfig(draft_paths=4, draft_length=4, cps=False))
    trees = 0
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        out = engine.generate(ids, 40)
        assert out.token_ids == hf_greedy(target, ids, 40)
        trees += sum(size > drafted for size, drafted in zip(out.stats.tree_sizes, out.stats.draft_lengths))
    assert trees > 0
    ids = tokenizer("the cat")["input_ids"]
    for seed in range(2):
        sampled = engine.generate(ids, 24, temperature=0.9, seed=seed)
        assert sampled.token_ids == engine.generate(ids, 24, temperature=0.9, seed=seed, mode="ar").token_ids
