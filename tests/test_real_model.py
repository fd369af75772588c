"""The default model itself (slow: Gemma 3 270M, converted once from the registry package's GGUF file): every mode
gives the tuned target's own greedy output, also past its 512-token sliding window, and it answers in its chat
format, stopping at the end of its turn."""

import pytest
import torch

from diffuspec import DiffuSpec, DiffuSpecConfig
from diffuspec.chat import format_chat

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine():
    return DiffuSpec.from_pretrained("gemma-3-270m", device="cpu", config=DiffuSpecConfig(mode="ar"))


def own_greedy(engine, ids: list[int], new_tokens: int) -> list[int]:
    model = engine.target
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         do_sample=False, max_new_tokens=new_tokens, pad_token_id=engine.tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


def test_every_mode_is_the_targets_own_greedy_decoding_past_the_sliding_window(engine):
    passage = " ".join(f"Item {i} costs {i * 7 % 23} euros." for i in range(140))  # about 1,100 tokens
    prompts = [format_chat(engine.tokenizer, [{"role": "user", "content": "What is the capital of Peru?"}]),
               format_chat(engine.tokenizer, [{"role": "system", "content": passage},
                                              {"role": "user", "content": "How much does item 131 cost?"}])]
    assert len(prompts[1]) > 2 * engine.target.config.sliding_window
    for ids in prompts:
        want = own_greedy(engine, ids, 48)
        for mode in engine.modes:
            if mode not in ("dlm", "spiffy"):
                assert engine.generate(ids, max_new_tokens=48, mode=mode).token_ids == want, mode


def test_answers_end_at_the_end_of_the_turn(engine):
    out = engine.generate(format_chat(engine.tokenizer, [{"role": "user", "content": "Hello"}]), max_new_tokens=64)
    assert out.finish_reason == "eos" and out.text.strip() and "<end_of_turn>" not in out.text
