"""The ``diffuspec`` command: every user error is one line on stderr and exit status 2; generate's knobs reach
the engine; the command and the package import without torch or transformers."""

import json
import subprocess
import sys

import pytest
import torch

from diffuspec import DiffuSpec
from diffuspec.cli import main
from diffuspec.config import MODES


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, targets, tokenizer):
    """A saved tiny target, one with truncated weights and one with a broken config."""
    root = tmp_path_factory.mktemp("models")
    for name in ("good", "truncated", "bad_config"):
        targets["llama"].save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (root / "bad_config" / "config.json").write_text("{")
    (root / "empty").mkdir()
    (root / "prompts.txt").write_text("def f(x):\n")
    (root / "empty.txt").write_text("\n")
    (root / "bad.jsonl").write_text('{"prompt": \n')
    return root


def user_errors(root):
    """(arguments, words the one-line message must hold); every one fails before generating anything."""
    no_cuda = [] if torch.cuda.is_available() else [(["generate", "x", "--device", "cuda"], "--device cuda")]
    return no_cuda + [
        (["generate", "x", "--target", str(root / "missing")], "no such directory"),
        (["generate", "x", "--target", str(root / "empty")], "no config.json"),
        (["generate", "x", "--target", str(root / "truncated")], "truncated"),
        (["generate", "x", "--target", str(root / "bad_config")], str(root / "bad_config")),
        (["generate", "x", "--target", str(root / "good"), "--drafter", str(root / "missing")], "--drafter"),
        (["generate", "x", "--device", "cuda:x"], "--device cuda:x"),
        (["generate", "x", "--seed", "-1"], "seed must be an integer in [0, 2**64 - 1]"),
        (["generate", "x", "--seed", str(2**64)], "seed must be an integer"),
        (["generate", "x", "--temperature", "nan"], "temperature must be a finite number"),
        (["generate", "x", "--temperature", "-1"], "temperature must be"),
        (["generate", "x", "--top-p", "0"], "top_p must be"),
        (["generate", "x", "--top-k", "0"], "top_k must be"),
        (["generate", "x", "--max-new-tokens", "0"], "max_new_tokens must be a positive integer"),
        (["generate", "x", "--draft-length", "0"], "draft_length must be >= 1"),
        (["generate", "x", "--target", str(root / "good"), "--mode", "diffuspec"], "needs a diffusion drafter"),
        (["bench", "--limit", "0"], "--limit must be a positive integer"),
        (["bench", "--repeats", "0"], "--repeats must be a positive integer"),
        (["bench", "--prompts", str(root / "missing.txt")], "not found"),
        (["bench", "--prompts", str(root / "empty.txt")], "holds no prompt"),
        (["bench", "--prompts", str(root / "bad.jsonl")], "cannot read prompts"),
        (["bench", "--target", "tiny", "--prompts", str(root / "prompts.txt"), "--methods", "warp"], "unknown methods ['warp']"),
        (["align", "--target", str(root / "good"), "--drafter", str(root / "good"), "--prompts",
          str(root / "missing.txt"), "--out", str(root / "out")], "not found"),
        (["align", "--target", str(root / "good"), "--drafter", str(root / "good"), "--prompts",
          str(root / "prompts.txt"), "--out", str(root / "out"), "--steps", "0"], "--steps must be"),
    ]


def test_user_errors_are_one_line_and_status_2(model_dirs, capsys):
    for argv, words in user_errors(model_dirs):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("diffuspec: error: ")]
        assert len(lines) == 1 and words in lines[0], (argv, err)
        assert "Traceback" not in err


def test_argparse_errors_exit_2(capsys):
    for argv in (["generate", "x", "--seed", "abc"], ["generate", "x", "--mode", "fast"], ["bench", "--limit", "x"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "error:" in capsys.readouterr().err


@pytest.fixture(scope="module")
def demo_engine():
    return DiffuSpec.from_pretrained("tiny", device="cpu")


def run_json(argv, capsys):
    """``diffuspec ARGV --json`` on the tiny preset."""
    assert main([*argv, "--target", "tiny", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_knobs_reach_the_engine(demo_engine, capsys):
    knobs = dict(temperature=0.8, top_k=20, top_p=0.9, seed=7, max_new_tokens=12)
    argv = ["generate", "def f(x):", "--length-policy", "adl", "--draft-length", "5", "--no-cps", "--stop", "\n\n"]
    argv += [f"--{name.replace('_', '-')}={value}" for name, value in knobs.items()]
    got = run_json(argv, capsys)
    engine = demo_engine.with_config(length_policy="adl", draft_length=5, cps=False)
    want = engine.generate("def f(x):", stop="\n\n", **knobs)
    assert got["token_ids"] == want.token_ids and got["text"] == want.text
    assert got["stats"]["draft_lengths"] == list(want.stats.draft_lengths)
    # Gumbel-max verification: a seed fixes the sampled text whatever drafts the policy makes
    assert got["token_ids"] == demo_engine.generate("def f(x):", stop="\n\n", mode="ar", **knobs).token_ids


def test_generate_accepts_every_mode(capsys):
    outputs = {mode: run_json(["generate", "import os\n", "--max-new-tokens", "6", "--mode", mode], capsys)
               for mode in MODES}
    assert all(out["stats"]["new_tokens"] >= 1 for out in outputs.values())
    speculative = {tuple(outputs[mode]["token_ids"]) for mode in ("ar", "diffuspec", "ar-drafter", "prompt-lookup")}
    assert len(speculative) == 1  # lossless: the target's own greedy output in each


def test_import_and_help_load_neither_torch_nor_transformers():
    code = (
        "import sys, diffuspec, diffuspec.cli\n"
        "try:\n"
        "    diffuspec.cli.main(['generate', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "--length-policy" in result.stdout and "--top-p" in result.stdout


def test_chat_sends_the_message_through_the_chat_template(demo_engine, capsys):
    from diffuspec.chat import format_chat

    got = run_json(["chat", "What does json.loads do?", "--system", "Be brief.", "--max-new-tokens", "12"], capsys)
    prompt = format_chat(demo_engine.tokenizer, [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "What does json.loads do?"}])
    assert got["token_ids"] == demo_engine.generate(prompt, max_new_tokens=12).token_ids
