"""The shipped pair: loads with plain transformers Auto classes, carries its chat template, fits the size
budget, and is lossless on held-out code, short and chat prompts."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from diffuspec import DiffuSpec
from diffuspec.cli import main
from diffuspec.loading import EMBEDDED_DIR, embedded_paths
from diffuspec.training import CHAT_TEMPLATE, read_prompts


def test_shipped_files_load_with_auto_classes():
    paths = embedded_paths()
    tokenizer = AutoTokenizer.from_pretrained(paths["target"])
    text = "def f(x):\n    return {'a': x ** 2}  # ünïcode\n"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.mask_token_id is not None and tokenizer.eos_token_id is not None
    for role, path in paths.items():
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.config.vocab_size == len(tokenizer), role
    drafter = AutoModelForCausalLM.from_pretrained(paths["drafter"])
    assert drafter.config.use_bidirectional_attention
    total = sum(f.stat().st_size for f in EMBEDDED_DIR.rglob("*.safetensors"))
    assert total < 42 * 2**20


def test_shipped_tokenizer_has_a_chat_template_with_tools():
    tokenizer = AutoTokenizer.from_pretrained(embedded_paths()["target"])
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather.",
                                               "parameters": {"properties": {"city": {"type": "string"}}}}}]
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Weather in Oslo?"}], tools=tools,
                                        add_generation_prompt=True)
    text = tokenizer.decode(ids)
    assert tokenizer.chat_template == CHAT_TEMPLATE  # the recipe's template, so both wrappers use it
    assert '{"name": "get_weather", "arguments": {"city": "string"}}' in text and text.endswith("<|assistant|>\n")
    assert len(read_prompts(EMBEDDED_DIR / "short_prompts.jsonl")) == 32


@pytest.fixture(scope="module")
def engine():
    return DiffuSpec.from_pretrained("tiny", device="cpu")


@pytest.mark.parametrize("prompts", ["prompts.jsonl", "short_prompts.jsonl", "chat_prompts.jsonl"])
def test_greedy_equality_on_heldout_prompts(engine, prompts):
    steps = accepted = 0
    for prompt in read_prompts(EMBEDDED_DIR / prompts)[:3]:
        ids = torch.tensor([engine.tokenizer(prompt)["input_ids"]])
        reference = engine.target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=48, pad_token_id=engine.tokenizer.pad_token_id)
        out = engine.generate(prompt, max_new_tokens=48)
        assert out.token_ids == reference[0, ids.shape[1]:].tolist()  # EOS included, as generate writes it
        assert engine.generate(prompt, max_new_tokens=48, mode="ar-drafter").token_ids == out.token_ids
        drafting = sum(1 for k in out.stats.draft_lengths if k > 0)  # the others are plain one-token steps
        steps, accepted = steps + drafting, accepted + out.stats.accepted_tokens
    assert accepted / steps > 1.0  # the aligned drafter is far better than chance


def test_cli_generate_json_on_the_embedded_pair(capsys):
    assert main(["generate", "import os\n", "--target", "tiny", "--max-new-tokens", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["finish_reason"] in ("eos", "length", "stop") and result["stats"]["steps"] >= 1
    assert len(result["token_ids"]) <= 20
