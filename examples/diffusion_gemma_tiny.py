"""DiffusionGemma (transformers' native block-diffusion LM) drafting for a Gemma 4 target, both tiny and random,
built in-process with the embedded demo tokenizer: the output is token for token the target's own greedy output,
and sampling with a seed gives the target's own sample. Swap in ``google/diffusiongemma-26B-A4B-it`` and a Gemma 4
checkpoint with ``DiffuSpec.from_pretrained(target, drafter)``; the adapter is chosen by itself.

    python examples/diffusion_gemma_tiny.py
"""

import os

import torch
from transformers import AutoTokenizer

from diffuspec import DiffuSpec, DiffuSpecConfig
from diffuspec.adapters import tiny_diffusion_gemma_pair
from diffuspec.loading import embedded_paths

NEW_TOKENS = int(os.environ.get("DIFFUSPEC_EXAMPLE_TOKENS", "48"))


def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(embedded_paths()["target"])
    target, drafter = tiny_diffusion_gemma_pair(len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id)
    engine = DiffuSpec(target, drafter, tokenizer, DiffuSpecConfig(draft_length=6, denoising_steps=2))
    prompt = tokenizer("def read_config(path):")["input_ids"]

    out = engine.generate(prompt, max_new_tokens=NEW_TOKENS)
    ids = torch.tensor([prompt])
    reference = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.pad_token_id)
    assert out.token_ids == reference[0, len(prompt):].tolist(), "not the target's own greedy output"
    print(f"greedy: {out.stats.new_tokens} tokens in {out.stats.steps} target passes, "
          f"{out.stats.drafter_forwards} DiffusionGemma passes, {out.stats.accepted_tokens} drafted tokens accepted "
          "(random weights: little to accept); identical to Gemma 4's own generate")

    sampled = engine.generate(prompt, max_new_tokens=NEW_TOKENS, temperature=0.8, seed=7)
    alone = engine.generate(prompt, max_new_tokens=NEW_TOKENS, temperature=0.8, seed=7, mode="ar")
    assert sampled.token_ids == alone.token_ids, "not the target's own sample"
    print("sampled (seed 7): the target's own sample, whatever DiffusionGemma drafted")


if __name__ == "__main__":
    main()
