"""Every bad input gets a clear error naming the problem and the fix; nothing is left half done."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from tiny_models import CONTEXT, char_tokenizer, hf_greedy, make_diffusion_drafter

from diffuspec import DiffuSpec, DiffuSpecConfig, DiffuSpecError, GenerationParams
from diffuspec.config import MODES


@pytest.fixture(scope="module")
def engine(targets, drafter, tokenizer):
    return DiffuSpec(targets["llama"], drafter, tokenizer)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=""), "prompt is empty"),
        (dict(prompt=[]), "prompt is empty"),
        (dict(prompt="a" * CONTEXT), "context window is 256"),
        (dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
        (dict(max_new_tokens=-3), "max_new_tokens must be a positive integer"),
        (dict(temperature=-1.0), "temperature must be"),
        (dict(temperature=float("nan")), "temperature must be"),
        (dict(temperature=1.0, top_p=0.0), "top_p must be a number in"),
        (dict(temperature=1.0, top_k=0), "top_k must be a positive integer"),
        (dict(stop=[""]), "stop must be a non-empty string"),
        (dict(mode="ar-drafter"), "needs ar_drafter"),
        (dict(mode="nonsense"), re.escape(f"mode 'nonsense' is unknown: use one of {', '.join(MODES)}")),
        (dict(mode=""), "mode '' is unknown"),
        (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*64 - 1\]"),
        (dict(seed=2**64), "seed must be an integer"),
        (dict(seed=1.5), "seed must be an integer"),
        (dict(seed=True), "seed must be an integer"),
        (dict(seed="7"), "seed must be an integer"),
        (dict(temperature=1.0, top_p="0.9"), "top_p must be a number"),
        (dict(temperature=1.0, top_k=True), "top_k must be a positive integer"),
        (dict(max_new_tokens=True), "max_new_tokens must be a positive integer"),
        (dict(max_new_tokens=2.0), "max_new_tokens must be a positive integer"),
        (dict(temperature="0.5"), "temperature must be a finite number"),
        (dict(stop=5), "stop must be a non-empty string or a list"),
        (dict(stop=["ok", None]), "stop must be a non-empty string or a list"),
        (dict(max_tokens=5), "unknown generation argument.*max_tokens: valid ones are max_new_tokens, temperature"),
        (dict(params={"temperature": 1.0}), "params must be a GenerationParams"),
        # token-id prompts: flat ints within the vocabulary
        (dict(prompt=b"abc"), "prompt must be text or a flat list of token ids, got bytes"),
        (dict(prompt=[5, 6.0]), r"integers only, got 6.0 \(float\)"),
        (dict(prompt=[5, True]), r"integers only, got True \(bool\)"),
        (dict(prompt=[[5, 6]]), "integers only, got \\[5, 6\\]"),
        (dict(prompt=torch.tensor([[5, 6]])), "integers only"),
        (dict(prompt=torch.tensor([5.0, 6.0])), "integers only"),
        (dict(prompt=torch.tensor([True, False])), "integers only"),
        (dict(prompt=np.array([5.0])), "integers only"),
        (dict(prompt=torch.tensor(5)), "a single number"),
        (dict(prompt=np.int64(5)), "a single number"),
        (dict(prompt=[5, -1]), "token id -1 is outside the target's vocabulary"),
        (dict(prompt=[5, 10_000]), "token id 10000 is outside the target's vocabulary"),
        (dict(prompt=None), "prompt must be text or a flat list of token ids, got NoneType"),
    ],
)
def test_bad_requests(engine, kwargs, message):
    kwargs = {"prompt": "abc", **kwargs}
    with pytest.raises(DiffuSpecError, match=message):
        engine.stream(**kwargs)  # raised at the call, before any iteration
    with pytest.raises(DiffuSpecError, match=message):
        engine.astream(**kwargs)  # async too: at the call, not at the first iteration
    assert engine.generate("abc", max_new_tokens=3).token_ids  # and the engine still works


def test_numpy_numbers_and_tensors_are_accepted(engine, tokenizer):
    ids = tokenizer("abc")["input_ids"]
    want = engine.generate(ids, max_new_tokens=4, temperature=0.5, top_k=3, top_p=0.9, seed=3).token_ids
    numpy_knobs = dict(max_new_tokens=np.int64(4), temperature=np.float32(0.5), top_k=np.int32(3),
                       top_p=np.float64(0.9), seed=np.uint64(3))
    for prompt in (np.array(ids), torch.tensor(ids), [np.int64(i) for i in ids], tuple(ids)):
        assert engine.generate(prompt, **numpy_knobs).token_ids == want
    params = GenerationParams(**numpy_knobs)  # canonical Python numbers inside
    assert [type(v) for v in (params.max_new_tokens, params.top_k, params.seed, params.temperature)] == [
        int, int, int, float]


def test_finish_reason_tells_a_full_context_window_from_max_new_tokens(targets, tokenizer):
    target = targets["gpt2"]
    engine = DiffuSpec(target, None, tokenizer, DiffuSpecConfig(mode="ar"))
    prompt = tokenizer("ab " * 84)["input_ids"][: CONTEXT - 6]  # room for 6 new tokens
    assert tokenizer.eos_token_id not in hf_greedy(target, prompt, 6)
    full = engine.generate(prompt, max_new_tokens=100)
    assert (full.finish_reason, len(full.token_ids)) == ("context", 6)
    assert full.token_ids == hf_greedy(target, prompt, 6)
    short = engine.generate(prompt, max_new_tokens=4)
    assert (short.finish_reason, short.token_ids) == ("length", full.token_ids[:4])
    assert engine.generate(prompt, max_new_tokens=6).finish_reason == "length"  # the budget ran out first


def test_drafter_without_mask_token(targets, drafter):
    tokenizer = char_tokenizer(mask=False)
    with pytest.raises(DiffuSpecError, match="no mask token.*mask_token_id="):
        DiffuSpec(targets["llama"], drafter, tokenizer)
    assert DiffuSpec(targets["llama"], drafter, tokenizer, mask_token_id=2).generate("ab", max_new_tokens=3)


def test_mismatched_vocabularies(targets, tokenizer):
    small = make_diffusion_drafter(len(tokenizer) - 5)
    with pytest.raises(DiffuSpecError, match="do not share this tokenizer"):
        DiffuSpec(targets["llama"], small, tokenizer)


def test_models_on_different_devices(targets, tokenizer):
    on_meta = make_diffusion_drafter(len(tokenizer)).to("meta")
    with pytest.raises(DiffuSpecError, match="put both on one device"):
        DiffuSpec(targets["llama"], on_meta, tokenizer)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="fast"), "mode 'fast' is unknown"),
        (dict(k_min=10, k_max=5), "k_min <= k_max"),
        (dict(draft_length=0), "draft_length must be >= 1"),
        (dict(cps_tau=1.5), "cps_tau"),
        (dict(draft_sampling="proposal", denoising_steps=2), "needs denoising_steps=1"),
        (dict(mode=""), "mode '' is unknown"),
        (dict(cps="no"), "DiffuSpecConfig.cps must be bool, got 'no'"),
        (dict(k_max=2.5), "DiffuSpecConfig.k_max must be int, got 2.5"),
        (dict(k_min=True), "DiffuSpecConfig.k_min must be int, got True"),
        (dict(draft_length=3.0), "DiffuSpecConfig.draft_length must be int or None"),
        (dict(adl_rho="0.5"), "DiffuSpecConfig.adl_rho must be float"),
        (dict(logits_shift="yes"), "DiffuSpecConfig.logits_shift must be bool or None"),
        (dict(length_policy="fastest"), "length_policy 'fastest' is unknown: use one of cost, adl"),
        (dict(draft_sampling="gumbel"), "draft_sampling 'gumbel' is unknown"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(DiffuSpecError, match=message):
        DiffuSpecConfig(**kwargs)


def test_config_takes_numpy_numbers_as_plain_ones():
    config = DiffuSpecConfig(k_max=np.int64(8), draft_length=np.int32(4), adl_rho=np.float32(0.25), adl_delta=4)
    assert (config.k_max, config.draft_length, config.adl_rho, config.adl_delta) == (8, 4, 0.25, 4.0)
    assert type(config.k_max) is int and type(config.adl_delta) is float
    json.dumps(dataclasses.asdict(config))  # plain values: the benchmark writes configs as JSON


def test_mode_without_its_drafter(targets, tokenizer):
    with pytest.raises(DiffuSpecError, match="needs a diffusion drafter"):
        DiffuSpec(targets["llama"], None, tokenizer)
    assert DiffuSpec(targets["llama"], None, tokenizer, DiffuSpecConfig(mode="ar")).generate("ab", max_new_tokens=2)

