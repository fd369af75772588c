"""``diffuspec tune-target``: a LoRA tuning written as a folder (adapter, chat template, end-of-turn tokens) that
loading applies to the target, merged, so the merged model is the target every output is checked against."""

import json

import torch
from tiny_models import make_target
from transformers import AutoTokenizer

from diffuspec import DiffuSpec, DiffuSpecConfig
from diffuspec.loading import embedded_paths
from diffuspec.training.tune import TuningRecipe, tune_target

END = "<|endoftext|>"  # the demo tokenizer's end-of-text stands in for Gemma's <end_of_turn>


def test_a_tuning_is_trained_written_and_applied_on_load(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(embedded_paths()["target"])
    target = make_target("gemma3", len(tokenizer))
    target.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    before = {name: p.clone() for name, p in target.named_parameters()}
    recipe = TuningRecipe(conversations=24, steps=3, batch_size=2, eval_conversations=3, eval_new_tokens=4,
                          checkpoint_every=2, end_of_turn=(END,))
    lines = []
    metrics = tune_target(target, tokenizer, tmp_path / "tuning", recipe, log=lines.append)
    assert any("step 3/3" in line for line in lines) and len(metrics["train_losses"]) == 3
    assert metrics["heldout"]["conversations"] == 3
    written = sorted(p.name for p in (tmp_path / "tuning").iterdir())
    assert written == ["adapter", "chat_template.jinja", "metrics.json", "tuning.json"]  # no checkpoint left
    assert json.loads((tmp_path / "tuning" / "tuning.json").read_text())["end_of_turn"] == [END]

    engine = DiffuSpec.from_pretrained(str(tmp_path / "base"), tuning=str(tmp_path / "tuning"),
                                       config=DiffuSpecConfig(mode="ar"))
    assert engine.tokenizer.chat_template == (tmp_path / "tuning" / "chat_template.jinja").read_text()
    assert tokenizer.convert_tokens_to_ids(END) in engine.eos_token_ids
    merged = dict(engine.target.named_parameters())
    assert not any("lora" in name for name in merged)  # merged, not wrapped
    changed = [n for n, p in merged.items() if n in before and not torch.equal(p, before[n])]
    assert any("q_proj" in n for n in changed) and not any("embed" in n for n in changed)
