"""Loading by path: loading arguments pass through, drafters pair with the target by tokenizer, every failure is
one DiffuSpecError naming the path and the fix, and no progress bars unless asked."""

import pytest
import torch
from tiny_models import char_tokenizer, hf_greedy, make_diffusion_drafter, make_target
from transformers.utils import logging as hf_logging

from diffuspec import DiffuSpec, DiffuSpecError
from diffuspec.adapters import DiffusionGemmaDrafter, DrafterWithTokenizer, tiny_diffusion_gemma_pair
from diffuspec.loading import load_models


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    """target/ (with tokenizer), drafter/ (weights only), reversed/ (a drafter with the same characters under
    other ids) and broken copies of target/."""
    root = tmp_path_factory.mktemp("models")
    vocab = len(tokenizer)
    make_target("llama", vocab).save_pretrained(root / "target")
    tokenizer.save_pretrained(root / "target")
    drafter = make_diffusion_drafter(vocab)
    drafter.save_pretrained(root / "drafter")
    drafter.save_pretrained(root / "reversed")
    char_tokenizer("zyxwvutsrqponmlkjihgfedcba .,").save_pretrained(root / "reversed")
    for name, cut in (("truncated", 0.5), ("no-weights", 0.0)):
        (root / name).mkdir()
        for file in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            (root / name / file).write_bytes((root / "target" / file).read_bytes())
        if cut:
            weights = (root / "target" / "model.safetensors").read_bytes()
            (root / name / "model.safetensors").write_bytes(weights[: int(len(weights) * cut)])
    return root


def test_a_drafter_saved_without_tokenizer_files_is_accepted(saved, tokenizer):
    engine = DiffuSpec.from_pretrained(str(saved / "target"), str(saved / "drafter"))
    assert not isinstance(engine._drafter_model, DrafterWithTokenizer)  # nothing to compare: the target's ids
    prompt = tokenizer("the quick fox")["input_ids"]
    assert engine.generate(prompt, max_new_tokens=24).token_ids == hf_greedy(engine.target, prompt, 24)


def test_a_drafter_with_another_tokenizer_is_translated_not_refused(saved, tokenizer):
    engine = DiffuSpec.from_pretrained(str(saved / "target"), str(saved / "reversed"))
    assert isinstance(engine._drafter_model, DrafterWithTokenizer)
    prompt = tokenizer("the quick fox")["input_ids"]
    assert engine.generate(prompt, max_new_tokens=24).token_ids == hf_greedy(engine.target, prompt, 24)


def test_alignment_refuses_a_drafter_with_another_tokenizer(saved, tmp_path):
    from diffuspec.training import align

    with pytest.raises(DiffuSpecError, match="another tokenizer than the target"):
        align(str(saved / "target"), str(saved / "reversed"), str(tmp_path / "prompts.jsonl"), str(tmp_path / "out"))


def test_loading_arguments_pass_through(saved):
    models = load_models(str(saved / "target"), str(saved / "drafter"), dtype="bfloat16", device_map="cpu",
                         trust_remote_code=False)
    assert models.target.dtype == models.drafter.dtype == torch.bfloat16
    assert models.target.device.type == "cpu"


def test_diffusion_gemma_loads_by_path_and_is_recognised(tmp_path, tokenizer):
    target, drafter = tiny_diffusion_gemma_pair(len(tokenizer))
    for name, model in (("target", target), ("drafter", drafter)):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    engine = DiffuSpec.from_pretrained(str(tmp_path / "target"), str(tmp_path / "drafter"))
    assert isinstance(engine._drafters["diffuspec"](), DiffusionGemmaDrafter)


@pytest.mark.parametrize("target, load, message", [
    ("nowhere", {}, r"target directory \S*nowhere does not exist"),
    ("truncated", {}, r"could not load the target from \S*truncated: .*damaged or truncated"),
    ("no-weights", {}, r"target directory \S*no-weights has a config.json but no weights"),
    ("target", {"device": "gpu"}, "unknown device 'gpu'"),
    ("target", {"device": "cuda:99"}, "'cuda:99' (is not available|does not exist)"),
    ("target", {"dtype": "float33"}, "unknown dtype 'float33'"),
])
def test_loading_failures_are_one_clear_error(saved, target, load, message):
    with pytest.raises(DiffuSpecError, match=message):
        DiffuSpec.from_pretrained(str(saved / target), **load)


def test_remote_code_needs_consent(tmp_path, tokenizer):
    from remote_replicas import write_replica

    write_replica("llada", tmp_path / "llada", tokenizer, vocab_size=len(tokenizer), mask_token_id=2)
    with pytest.raises(DiffuSpecError, match="trust_remote_code=True"):
        DiffuSpec.from_pretrained(str(tmp_path / "llada"))


@pytest.mark.parametrize("verbose", ["", "1"])
def test_loading_is_quiet_unless_asked(saved, capfd, monkeypatch, verbose):
    monkeypatch.setenv("DIFFUSPEC_VERBOSE", verbose)
    capfd.readouterr()
    load_models(str(saved / "target"), str(saved / "drafter"))
    assert ("Loading weights" in capfd.readouterr().err) == bool(verbose)
    assert hf_logging.is_progress_bar_enabled()  # the switch is put back
