"""The demo pair's architectures: a Llama causal LM (target, AR drafter) and a bidirectional Gemma3 drafter."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int
    ffn: int




def _special_ids(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, tie_word_embeddings=True,
    )


def build_ar_model(size: ModelSize, tokenizer, context: int) -> LlamaForCausalLM:
    """A Llama-architecture causal LM (the target, and the AR drafter baseline)."""
    config = LlamaConfig(
        hidden_size=size.hidden, intermediate_size=size.ffn, num_hidden_layers=size.layers,
        num_attention_heads=size.heads, num_key_value_heads=size.heads, max_position_embeddings=context,
        **_special_ids(tokenizer),
    )
    return LlamaForCausalLM(config)


def build_diffusion_model(size: ModelSize, tokenizer, context: int, shifted: bool = False) -> Gemma3ForCausalLM:
    """A native bidirectional transformer (Gemma3 with ``use_bidirectional_attention``). ``shifted`` is recorded
    in the config (``diffuspec_shifted_logits``) so the engine reads its logits the right way."""
    config = Gemma3TextConfig(
        hidden_size=size.hidden, intermediate_size=size.ffn, num_hidden_layers=size.layers,
        num_attention_heads=size.heads, num_key_value_heads=size.heads, head_dim=size.hidden // size.heads,
        max_position_embeddings=context, use_bidirectional_attention=True,
        # Without a causal mask, order comes from RoPE alone: Gemma3's global-layer theta (1e6) barely rotates
        # over a few hundred positions, and a small model then reads its context as a bag of words.
        rope_parameters={kind: {"rope_type": "default", "rope_theta": 10_000.0} for kind in ("full_attention", "sliding_attention")},
        query_pre_attn_scalar=size.hidden // size.heads,
        layer_types=["full_attention"] * size.layers, mask_token_id=tokenizer.mask_token_id,
        diffuspec_shifted_logits=shifted,
        **_special_ids(tokenizer),
    )
    return Gemma3ForCausalLM(config)


def set_bidirectional(model: Gemma3ForCausalLM, bidirectional: bool) -> None:
    """Switch a Gemma3 model between causal and bidirectional attention (Dream's AR-to-diffusion adaptation
    starts from a causal model)."""
    model.config.use_bidirectional_attention = bidirectional
    for layer in model.model.layers:
        layer.self_attn.is_causal = not bidirectional

