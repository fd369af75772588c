"""Every bad input gets a clear error naming the problem and the fix; nothing is left half done."""

import pytest
from conftest import CONTEXT, char_tokenizer, make_diffusion_drafter

from diffuspec import DiffuSpec, DiffuSpecConfig, DiffuSpecError
from diffuspec.cli import main


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
        (dict(mode="nonsense"), "mode 'nonsense' is unknown: use one of diffuspec, ar"),
    ],
)
def test_bad_requests(engine, kwargs, message):
    kwargs = {"prompt": "abc", **kwargs}
    with pytest.raises(DiffuSpecError, match=message):
        engine.stream(**kwargs)  # raised at the call, before any iteration
    assert engine.generate("abc", max_new_tokens=3).token_ids  # and the engine still works


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
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(DiffuSpecError, match=message):
        DiffuSpecConfig(**kwargs)


def test_mode_without_its_drafter(targets, tokenizer):
    with pytest.raises(DiffuSpecError, match="needs a diffusion drafter"):
        DiffuSpec(targets["llama"], None, tokenizer)
    assert DiffuSpec(targets["llama"], None, tokenizer, DiffuSpecConfig(mode="ar")).generate("ab", max_new_tokens=2)


def test_cli_reports_errors_without_traceback(capsys):
    code = main(["generate", "hello", "--max-new-tokens", "0"])
    assert code == 2
    assert "max_new_tokens must be a positive integer" in capsys.readouterr().err
