"""Small replicas of the remote-code diffusion LMs Dream and LLaDA, written out as ``trust_remote_code``
checkpoints (config.json with ``auto_map``, configuration and modeling files, random weights, a tokenizer) so
that the real loading path runs offline. They honour the published forward contracts that matter to a drafter:

- Dream (``DreamModel``, ``AutoModel`` only): ``forward(input_ids, attention_mask=None, position_ids=None,
  past_key_values=None, ..., num_logits_to_keep=0)``; ``attention_mask`` None, ``"full"`` or a 4D mask;
  bidirectional attention; fills a ``DynamicCache``; ``MaskedLMOutput`` whose logits at t predict t + 1
  (shifted); rotary init through ``ROPE_INIT_FUNCTIONS[rope_type]`` with ``rope_type = "default"``.
- LLaDA (``LLaDAModelLM``, ``AutoModel``): ``forward(input_ids, inputs_embeds=None, attention_mask=None,
  attention_bias=None, past_key_values=None, ..., use_cache=None)`` asserting
  ``past_key_values is None and not use_cache``; a 2D attention mask with zeros builds a causal bias, otherwise
  attention is bidirectional; unshifted logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffuspec.adapters.remote_code import default_rope_shim

_BODY = '''
import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx, self.heads = layer_idx, config.num_attention_heads
        d = config.hidden_size
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=True)
        self.out = nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, config.intermediate_size), nn.GELU(), nn.Linear(config.intermediate_size, d))

    def forward(self, x, cos, sin, bias, cache):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + self.out(y.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Body(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size)

    def forward(self, input_ids, inv_freq, bias, cache):
        past = cache.get_seq_length() if cache is not None else 0
        positions = torch.arange(past, past + input_ids.shape[1], device=input_ids.device, dtype=torch.float)
        angles = torch.outer(positions, inv_freq.to(input_ids.device))
        emb = torch.cat((angles, angles), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin, bias, cache)
        return self.norm(x)
'''

_DREAM = _BODY + '''
from transformers.modeling_outputs import MaskedLMOutput
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS


class DreamConfig(PreTrainedConfig):
    model_type = "dream"

    def __init__(self, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=256, rope_theta=10000.0, rope_scaling=None,
                 mask_token_id=None, **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.max_position_embeddings, self.rope_theta, self.rope_scaling = max_position_embeddings, rope_theta, rope_scaling
        self.mask_token_id = mask_token_id
        super().__init__(**kwargs)


class DreamRotaryEmbedding(nn.Module):
    def __init__(self, config, device=None):
        super().__init__()
        self.rope_type = config.rope_scaling.get("rope_type") if config.rope_scaling else "default"
        self.rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]  # "default": gone from transformers 5
        inv_freq, self.attention_scaling = self.rope_init_fn(config, device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)


class DreamModel(PreTrainedModel):
    config_class = DreamConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = Body(config)
        self.rotary_emb = DreamRotaryEmbedding(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                cache_position=None, num_logits_to_keep=0, **kwargs):
        if isinstance(attention_mask, str):
            assert attention_mask == "full", attention_mask
            attention_mask = None
        elif attention_mask is not None:
            assert attention_mask.dim() == 4, "Dream takes None, 'full' or a 4D attention mask"
        hidden = self.model(input_ids, self.rotary_emb.inv_freq, attention_mask, past_key_values)
        return MaskedLMOutput(logits=self.lm_head(hidden[:, -num_logits_to_keep:]))
'''

_LLADA = _BODY + '''
from transformers.modeling_outputs import CausalLMOutputWithPast


class LLaDAConfig(PreTrainedConfig):
    model_type = "llada"

    def __init__(self, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, max_sequence_length=256, mask_token_id=None, use_cache=False, **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.max_sequence_length, self.mask_token_id, self.use_cache = max_sequence_length, mask_token_id, use_cache
        super().__init__(**kwargs)


class LLaDAModelLM(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = Body(config)
        head_dim = config.hidden_size // config.num_attention_heads
        inv_freq = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.ff_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.ff_out

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, attention_bias=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None):
        if use_cache is None:
            use_cache = self.config.use_cache
        assert past_key_values is None and not use_cache, "The kvcache is not suppotred for MDM."
        bias = None
        if attention_mask is not None and 0.0 in attention_mask:  # a 2D padding mask: LLaDA turns causal
            n = input_ids.shape[1]
            bias = torch.ones(n, n, dtype=torch.bool, device=input_ids.device).tril()
            bias = bias & attention_mask.bool().view(input_ids.shape[0], 1, 1, n)
        hidden = self.model(input_ids, self.inv_freq, bias, None)
        return CausalLMOutputWithPast(logits=self.ff_out(hidden))
'''

REPLICAS = {
    "dream": ("configuration_dream", "DreamConfig", "modeling_dream", "DreamModel", _DREAM),
    "llada": ("configuration_llada", "LLaDAConfig", "modeling_llada", "LLaDAModelLM", _LLADA),
}


def write_replica(kind: str, directory: Path, tokenizer, *, vocab_size: int, mask_token_id: int,
                  seed: int = 0) -> Path:
    """A ``trust_remote_code`` checkpoint of a tiny random Dream or LLaDA replica in ``directory``."""
    config_module, config_class, model_module, model_class, source = REPLICAS[kind]
    namespace: dict = {}
    exec(compile(source, f"{model_module}.py", "exec"), namespace)
    config = namespace[config_class](vocab_size=vocab_size, mask_token_id=mask_token_id)
    with default_rope_shim(remote_code=True):  # building Dream needs it as much as loading it does
        model = namespace[model_class](config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    model.save_pretrained(directory)
    for module in (config_module, model_module):
        (directory / f"{module}.py").write_text(source)
    saved = json.loads((directory / "config.json").read_text())
    saved["auto_map"] = {"AutoConfig": f"{config_module}.{config_class}", "AutoModel": f"{model_module}.{model_class}"}
    (directory / "config.json").write_text(json.dumps(saved))
    tokenizer.save_pretrained(directory)
    return directory
