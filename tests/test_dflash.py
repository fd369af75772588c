"""DFlash drafters (transformers' ``speculation_type="dflash"`` architecture): in transformers' loop and ours,
lossless, with and without path search; and ``train-dflash`` end to end on a tiny target."""

from __future__ import annotations

import json
import string

import pytest
import torch
from tiny_models import CONTEXT, EOS, MASK, PAD, _init, char_tokenizer, hf_greedy, make_target
from transformers import AutoModel, MuseGlimmerAssistantConfig, MuseGlimmerAssistantModel

from diffuspec import DiffuSpec, DiffuSpecConfig
from diffuspec.adapters.dflash import DFlashDrafter
from diffuspec.bench import dflash_methods
from diffuspec.config import DiffuSpecError

PROMPTS = ["the cat sat on", "a", "hello world, hello"]


def make_dflash(target, block_size: int = 5, seed: int = 3) -> MuseGlimmerAssistantModel:
    """A tiny random DFlash drafter for ``target`` (its width, two of its layers)."""
    config = MuseGlimmerAssistantConfig(
        hidden_size=target.config.hidden_size, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=CONTEXT, layer_types=["full_attention"],
        block_size=block_size, mask_token_id=MASK, target_layer_ids=[0, 1], bos_token_id=None, eos_token_id=EOS,
        pad_token_id=PAD,
    )
    return _init(MuseGlimmerAssistantModel(config), seed, scale=0.3)


@pytest.fixture(scope="module")
def pair(tokenizer, targets):
    target = targets["llama"]
    return target, make_dflash(target)


def _engine(target, dflash, tokenizer, **config) -> DiffuSpec:
    return DiffuSpec(target, DFlashDrafter(target, dflash), tokenizer, DiffuSpecConfig(**config))


@pytest.mark.parametrize("config", [{"cps": False, "draft_length": 4}, {"cps": True, "k_max": 4}],
                         ids=["dflash", "diffuspec-dflash"])
def test_ours_equals_target_greedy(pair, tokenizer, config):
    target, dflash = pair
    engine = _engine(target, dflash, tokenizer, **config)
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        assert engine.generate(ids, 40).token_ids == hf_greedy(target, ids, 40)


def test_transformers_loop_agrees(pair, tokenizer):
    target, dflash = pair
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        x = torch.tensor([ids])
        out = target.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=40,
                              eos_token_id=EOS, pad_token_id=PAD, assistant_model=dflash, speculation_type="dflash")
        assert out[0, len(ids):].tolist() == hf_greedy(target, ids, 40)


def test_sampled_output_is_the_targets(pair, tokenizer):
    """Sampling goes through the same Gumbel-max verification: a seed gives the target-only output."""
    target, dflash = pair
    engine = _engine(target, dflash, tokenizer, cps=False, draft_length=4)
    ids = tokenizer("the cat")["input_ids"]
    for seed in range(3):
        sampled = engine.generate(ids, 30, temperature=0.9, top_p=0.95, seed=seed)
        assert sampled.token_ids == engine.generate(ids, 30, temperature=0.9, top_p=0.95, seed=seed, mode="ar").token_ids


def test_drafter_cache_equals_recomputation(pair, tokenizer):
    """The drafter's cache of projected target context is exact: after several steps its block logits equal a
    fresh pass over all the context at once."""
    target, dflash = pair
    engine = _engine(target, dflash, tokenizer, cps=False, draft_length=4)
    ids = tokenizer("hello world, hello")["input_ids"]
    tokens = engine.generate(ids, 20).token_ids
    context = torch.tensor(ids + tokens)

    stepped = DFlashDrafter(target, dflash)  # fed in two pieces, drafting between them
    fresh = DFlashDrafter(target, dflash)
    with torch.inference_mode():
        out = target(context[None, :-1], output_hidden_states=list(stepped.hidden_layers))
        states = torch.cat([out.hidden_states[i][0] for i in stepped.hidden_layers], dim=-1)
    cut = len(ids) - 1
    stepped.observe_hidden_states(states[:cut])
    stepped.propose(context[: cut + 1], 4)
    stepped.observe_hidden_states(states[cut:])
    fresh.observe_hidden_states(states)
    a, b = stepped.propose(context, 4).logprobs, fresh.propose(context, 4).logprobs
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_bench_methods_run_and_stay_lossless(pair, tokenizer):
    target, dflash = pair
    engine = DiffuSpec(target, None, tokenizer, DiffuSpecConfig(mode="ar"))
    ids = tokenizer("the cat sat on")["input_ids"]
    reference = hf_greedy(target, ids, 24)
    for name, run in dflash_methods(engine, dflash).items():
        assert run(ids, 24)[0] == reference, name


def test_foreign_drafter_is_refused(tokenizer, targets):
    deeper = make_dflash(targets["llama"])
    deeper.config.target_layer_ids = [0, 5]  # deeper than the target
    with pytest.raises(ValueError, match="train-dflash"):
        DFlashDrafter(targets["llama"], deeper)


def test_train_dflash_end_to_end(tmp_path):
    """A tiny target with a character tokenizer (newlines included: raw prompts start at corpus lines) gets a
    drafter that transformers loads with AutoModel and runs losslessly."""
    from diffuspec.training.dflash import DFlashRecipe, train_dflash
    from diffuspec.training.target_text import TextRecipe

    tokenizer = char_tokenizer(string.ascii_letters + string.digits + " .,:()=_'\"\n")
    target = make_target("llama", len(tokenizer))
    target.save_pretrained(tmp_path / "target")
    tokenizer.save_pretrained(tmp_path / "target")
    text = TextRecipe(raw_prompts=16, chat_prompts=0, prompt_max=12, continuation=12, eval_raw_prompts=4,
                      eval_chat_prompts=0, corpus_bytes=1_000_000, chunk=8)
    recipe = DFlashRecipe(layers=1, heads=4, ffn=32, block_size=4, steps=4, batch_rows=4, blocks_per_row=2, text=text)
    metrics = train_dflash(tmp_path / "target", tmp_path / "dflash", recipe)
    saved = json.loads((tmp_path / "dflash" / "metrics.json").read_text())
    assert saved["own_parameters"] == metrics["own_parameters"]
    assert len(saved["heldout"]["per_position_acceptance"]) == 3
    assert (tmp_path / "dflash" / "README.md").is_file()
    dflash = AutoModel.from_pretrained(tmp_path / "dflash")
    assert dflash.config.block_size == 4 and dflash.config.mask_token_id == MASK
    ids = tokenizer("def f(x):")["input_ids"]
    x = torch.tensor([ids])
    out = target.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=16, eos_token_id=EOS,
                          pad_token_id=PAD, assistant_model=dflash, speculation_type="dflash")
    assert out[0, len(ids):].tolist() == hf_greedy(target, ids, 16)


def test_trees_with_a_hidden_state_drafter_are_refused_when_built(tokenizer, targets):
    target = targets["llama"]
    with pytest.raises(DiffuSpecError, match="draft_paths=1"):
        DiffuSpec(target, DFlashDrafter(target, make_dflash(target)), tokenizer, DiffuSpecConfig(draft_paths=4))
