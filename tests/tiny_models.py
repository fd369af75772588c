"""Tiny randomly initialised HF models and a character tokenizer, built in-process (no downloads).

Imported by name from the tests (``from tiny_models import ...``); its fixtures are registered by conftest.py.
A module name of its own: the integrations' tests have a conftest.py too, and two modules both called
``conftest`` cannot both be imported by name in one pytest run."""

from __future__ import annotations

import string

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

SPECIALS = ["<pad>", "<eos>", "<mask>", "<unk>"]
PAD, EOS, MASK = 0, 1, 2
ALPHABET = string.ascii_lowercase + " .,"
CONTEXT = 256


def char_tokenizer(alphabet: str = ALPHABET, mask: bool = True) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(alphabet))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    specials = dict(pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    if mask:
        specials["mask_token"] = "<mask>"
    return PreTrainedTokenizerFast(tokenizer_object=core, **specials)


def _init(model: torch.nn.Module, seed: int, scale: float) -> torch.nn.Module:
    # Larger-than-default weights make the random logits peaked, so argmax ties (which float rounding could
    # break either way between a one-token and a block forward) do not occur.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def make_target(arch: str, vocab_size: int, seed: int = 0, eos: int = EOS):
    common = dict(vocab_size=vocab_size, eos_token_id=eos, pad_token_id=PAD, bos_token_id=None)
    if arch == "llama":
        config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=CONTEXT, **common)
        model = LlamaForCausalLM(config)
    elif arch == "qwen2":
        config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=CONTEXT, **common)
        model = Qwen2ForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=CONTEXT, **common)
        model = GPT2LMHeadModel(config)
    elif arch == "gemma3":  # Gemma 3's layout: sliding-window layers around a global one, tied embedding
        config = Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                  num_key_value_heads=1, head_dim=8, sliding_window=8, max_position_embeddings=CONTEXT,
                                  layer_types=["sliding_attention", "full_attention", "sliding_attention"], **common)
        model = Gemma3ForCausalLM(config)
    else:
        raise ValueError(arch)
    return _init(model, seed, scale=0.3)


def make_diffusion_drafter(vocab_size: int, seed: int = 1) -> Gemma3ForCausalLM:
    config = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=CONTEXT, use_bidirectional_attention=True,
        layer_types=["full_attention"] * 2, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None,
    )
    return _init(Gemma3ForCausalLM(config), seed, scale=0.3)


def hf_greedy(target, prompt_ids: list[int], max_new_tokens: int, eos: int | list[int] = EOS) -> list[int]:
    """The reference: the target's own greedy decoding in transformers."""
    input_ids = torch.tensor([prompt_ids])
    out = target.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=max_new_tokens,
        eos_token_id=eos, pad_token_id=PAD,
    )
    return out[0, len(prompt_ids):].tolist()


@pytest.fixture(scope="session")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="session")
def targets(tokenizer):
    return {arch: make_target(arch, len(tokenizer), seed=i)
            for i, arch in enumerate(["llama", "qwen2", "gpt2", "gemma3"])}


@pytest.fixture(scope="session")
def drafter(tokenizer):
    return make_diffusion_drafter(len(tokenizer))
