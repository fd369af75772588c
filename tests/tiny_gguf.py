"""A real GGUF file of a tiny random Llama with the embedded byte-level BPE tokenizer, written with the gguf
package as llama.cpp lays it out (float32 tensors, q/k rows in llama.cpp's rotary order), so transformers' own
GGUF reader converts it back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from diffuspec.loading import embedded_paths

HEADS, KV_HEADS, LAYERS, HIDDEN, FFN, CONTEXT = 4, 2, 2, 32, 64, 256


def _rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """q/k rows in llama.cpp's interleaved rotary order (transformers undoes this when it reads the file)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path: str | Path, seed: int = 0) -> LlamaForCausalLM:
    """Write the file and return the model it holds."""
    tokenizer = AutoTokenizer.from_pretrained(embedded_paths()["target"])
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [t for t, _ in sorted(data["model"]["vocab"].items(), key=lambda item: item[1])]
    special = {added["id"] for added in data["added_tokens"]}
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)).eval()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges([" ".join(merge) for merge in data["model"]["merges"]])
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])  # 3: control
    writer.add_bos_token_id(tokenizer.eos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    weights = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.add_tensor("output.weight", weights["lm_head.weight"])
    for i in range(LAYERS):
        layer = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", weights[layer + "input_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", weights[layer + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight",
                          _rotary_rows(model.model.layers[i].self_attn.q_proj.weight.detach(), HEADS).numpy())
        writer.add_tensor(f"blk.{i}.attn_k.weight",
                          _rotary_rows(model.model.layers[i].self_attn.k_proj.weight.detach(), KV_HEADS).numpy())
        writer.add_tensor(f"blk.{i}.attn_v.weight", weights[layer + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", weights[layer + "self_attn.o_proj.weight"])
        for name, key in (("ffn_gate", "gate_proj"), ("ffn_up", "up_proj"), ("ffn_down", "down_proj")):
            writer.add_tensor(f"blk.{i}.{name}.weight", weights[layer + f"mlp.{key}.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
