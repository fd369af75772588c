"""GGUF files as targets: converted once (one line on stderr), cached by sha256, dtype and transformers version,
decoded losslessly against the model transformers itself reads from the file; bad files are clear errors."""

import hashlib

import pytest
from tiny_gguf import write_tiny_gguf
from tiny_models import hf_greedy
from transformers import AutoModelForCausalLM

from diffuspec import DiffuSpec, DiffuSpecConfig, DiffuSpecError
from diffuspec.gguf import cache_root, file_sha256

PROMPT = "def read_config(path):\n    with open(path) as f:\n        return f.read()\n\ndef read_config(path):"


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    write_tiny_gguf(folder / "tiny.gguf")
    return folder


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSPEC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def conversions() -> list[str]:
    return sorted(p.name for p in (cache_root() / "gguf").iterdir() if p.is_dir())


def test_a_gguf_file_is_converted_once_and_decoded_losslessly(gguf_dir, capfd):
    reference = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file="tiny.gguf").eval()
    capfd.readouterr()  # transformers' own progress bars
    engine = DiffuSpec.from_pretrained(str(gguf_dir / "tiny.gguf"), config=DiffuSpecConfig(mode="prompt-lookup"))
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and "converting tiny.gguf to float32 once" in lines[0]  # the only progress report
    ids = engine.tokenizer(PROMPT)["input_ids"]
    want = hf_greedy(reference, ids, 40, eos=engine.tokenizer.eos_token_id)
    for mode in ("prompt-lookup", "ar"):
        assert engine.generate(ids, max_new_tokens=40, mode=mode).token_ids == want
    again = DiffuSpec.from_pretrained(str(gguf_dir), gguf_file="tiny.gguf", config=DiffuSpecConfig(mode="ar"))
    assert capfd.readouterr().err == ""  # nothing converted the second time
    assert again.generate(ids, max_new_tokens=40).token_ids == engine.generate(ids, max_new_tokens=40, mode="ar").token_ids
    assert len(conversions()) == 1
    DiffuSpec.from_pretrained(str(gguf_dir / "tiny.gguf"), dtype="bfloat16", config=DiffuSpecConfig(mode="ar"))
    assert len(conversions()) == 2 and any("bfloat16" in name for name in conversions())


def test_the_files_sha256_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    file = tmp_path / "x.gguf"
    file.write_bytes(b"first")
    assert file_sha256(file) == hashlib.sha256(b"first").hexdigest()
    monkeypatch.setattr(hashlib, "sha256", lambda: pytest.fail("the digest was computed again"))
    assert file_sha256(file) == hashlib.new("sha256", b"first").hexdigest()
    monkeypatch.undo()
    file.write_bytes(b"second, longer")
    assert file_sha256(file) == hashlib.sha256(b"second, longer").hexdigest()


def test_a_damaged_file_is_a_clear_error_and_leaves_no_partial_conversion(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(DiffuSpecError, match="could not convert the GGUF file .*broken.gguf"):
        DiffuSpec.from_pretrained(str(broken))
    assert not (cache_root() / "gguf").exists() or conversions() == []


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "nowhere/model.gguf"}, "the GGUF file nowhere/model.gguf does not exist"),
    ({"target": ".", "gguf_file": "missing.gguf"}, "gguf_file='missing.gguf': no such file in ."),
])
def test_missing_gguf_files_name_the_problem(kwargs, message):
    with pytest.raises(DiffuSpecError, match=message):
        DiffuSpec.from_pretrained(**kwargs)
