"""Attention whose result for a query is the same bits whether it comes alone or inside a block of queries.

A quantised target rounds every activation to a grid, so a last-bit difference between two ways of computing
the same token (one query alone in an autoregressive step, or among the k queries of a verification pass) can
push a value across a rounding boundary, and the change then grows through the layers: measured on Gemma 3
270M with int8 linears and transformers' ``sdpa`` attention, the logits of 64 tokens verified in 16-token blocks
differed from their one-token logits by up to 3.7, and the argmax of 15 of them changed. Everything else in a
decoder layer (norms, rotary embedding, activations, residuals, and ``row_exact_int8``'s linears) already gives
each row the same bits whatever the block; attention does not, because a fused kernel blocks its reductions by
the number of queries and keys it is given, and a block's mask pads each row with keys it may not see.

``row_exact_attention`` therefore runs every query through the same call an autoregressive step makes: one
``scaled_dot_product_attention`` per query (its heads grouped on their key head, as transformers does for one
query), on exactly the keys that query may see, sliced from the cache where they lie (the same tensor, strides
and alignment as in a one-token step); no mask, so no padding. The keys each query sees are read from the mask
transformers builds for ``sdpa``. The cost is one kernel call per query and layer (about 18 x k calls a pass
on Gemma 3 270M), which is why only the int8 precision, which needs it, installs it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "diffuspec_row_exact"


def visible_keys(mask: torch.Tensor | None, q_length: int, kv_length: int, causal: bool,
                 batch: int) -> list[list[slice | torch.Tensor]]:
    """For each sequence and query, the keys it attends to: a slice where they are contiguous, else their
    indices. ``mask`` is sdpa's boolean mask [batch, 1, q, kv] (True: attend) or None, which transformers passes
    only for one query or a square causal block (the last ``q_length`` keys are the queries' own)."""
    if mask is None:
        offset = kv_length - q_length if causal else None
        return [[slice(0, kv_length if offset is None else offset + i + 1) for i in range(q_length)]
                for _ in range(batch)]
    if mask.dtype != torch.bool:
        raise ValueError(f"row-exact attention reads a boolean mask, got {mask.dtype}")
    rows = mask[:, 0].expand(batch, q_length, kv_length)
    counts = rows.sum(-1)
    first = rows.int().argmax(-1)
    contiguous = rows.int().cumsum(-1).gather(-1, (first + counts - 1).clamp_min(0)[..., None])[..., 0] == counts
    out = []
    for b, (starts, sizes, plain) in enumerate(zip(first.tolist(), counts.tolist(), contiguous.tolist())):
        out.append([slice(s, s + n) if ok else rows[b, i].nonzero()[:, 0]
                    for i, (s, n, ok) in enumerate(zip(starts, sizes, plain))])
    return out


def row_exact_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [b, heads, q, d], key/value [b, kv heads, kv, d];
    returns [b, q, heads, d]."""
    if kwargs.get("softcap") is not None or dropout:
        raise ValueError("row-exact attention supports neither logit soft-capping nor dropout")
    batch, heads, q_length, dim = query.shape
    kv_heads, kv_length = key.shape[1], key.shape[2]
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    keys = visible_keys(attention_mask, q_length, kv_length, causal, batch)
    out = query.new_empty(batch, q_length, heads, value.shape[-1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one query's attention is too small to share: waking a thread team costs more
    try:
        for b in range(batch):
            for i, seen in enumerate(keys[b]):
                # the query's heads grouped on their kv head, as transformers does for one query
                one = query[b : b + 1, :, i].reshape(1, kv_heads, heads // kv_heads, dim)
                k, v = (key[b : b + 1, :, seen], value[b : b + 1, :, seen])
                out[b, i] = F.scaled_dot_product_attention(one, k, v, scale=scaling).reshape(heads, -1)
    finally:
        torch.set_num_threads(threads)
    return out, None


def use_row_exact_attention(model: PreTrainedModel) -> None:
    """Register ``row_exact_attention`` with transformers (once) and switch ``model`` to it."""
    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, row_exact_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
