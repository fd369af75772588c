"""Evaluating states of the current block: one forward pass gives the logits of several candidate blocks after
the same committed text.

Every row is the last committed token followed by the block, so shifted (Dream-style: position t predicts
t + 1) and unshifted (LLaDA-style) models read a block position's logits from the same L + 1 outputs. Only
masked positions get logits: the sampler never looks at the others.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, PreTrainedModel

from ..caches import cache_kwargs


class BlockRows:
    """``rows(committed, blocks)``: for each of the R blocks [R, L] after ``committed``, the logits [m_r, V] of
    its masked positions, in block order.

    ``prefix_cache=True``: the committed text (all but its last token) lives in a KV cache, extended once per
    block by the newly committed tokens, which attend to the cache and to each other (block-causal). The rows
    are packed into ONE sequence after it, each attending to the cache and to itself only, at the same
    positions: one forward, no copy of the cache per row. ``prefix_cache=False`` recomputes everything: a batch
    of full sequences, fully bidirectional.
    """

    def __init__(self, model: PreTrainedModel, mask_token_id: int, *, shifted: bool, prefix_cache: bool) -> None:
        self.model = model
        self.mask_token_id = mask_token_id
        self.offset = 0 if shifted else 1  # output index of block position j within a row: j + offset
        self.prefix_cache = prefix_cache
        self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.cache: DynamicCache | None = None
        self.cached = 0  # committed tokens whose keys and values are in the cache

    @torch.inference_mode()
    def __call__(self, committed: torch.Tensor, blocks: torch.Tensor) -> list[torch.Tensor]:
        rows = torch.cat([committed[-1:].expand(blocks.shape[0], 1), blocks], dim=1)  # [R, L + 1]
        masked = blocks == self.mask_token_id
        logits = self._packed(committed, rows, masked) if self.prefix_cache else self._batched(committed, rows, masked)
        return list(logits.float().split(masked.sum(dim=1).tolist()))

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor, **kwargs) -> torch.Tensor:
        """Logits at sequence indices ``keep``. An explicit boolean 4D ``mask``: transformers uses it as it is
        (no mask functions, which cost as much as a small model's forward on CPU, and any pattern we need)."""
        if self._keep_arg:
            return self.model(input_ids=input_ids, attention_mask=mask, logits_to_keep=keep, **kwargs).logits
        return self.model(input_ids=input_ids, attention_mask=mask, **kwargs).logits[:, keep]

    def _batched(self, committed: torch.Tensor, rows: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        n_rows, width = rows.shape
        ids = torch.cat([committed[:-1].expand(n_rows, -1), rows], dim=1)
        mask = torch.ones(1, 1, ids.shape[1], ids.shape[1], dtype=torch.bool, device=ids.device)
        keep = torch.arange(ids.shape[1] - width, ids.shape[1], device=ids.device)
        logits = self._forward(ids, mask, keep, use_cache=False)  # [R, L + 1, V]
        return logits[:, self.offset : self.offset + masked.shape[1]][masked]

    def _packed(self, committed: torch.Tensor, rows: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        n_rows, width = rows.shape
        if self.cache is None:
            # Full layers only (no config): the explicit mask says what each token sees, and a sliding-window
            # layer would drop keys the mask still names.
            self.cache = DynamicCache()
        pending = committed[self.cached : committed.numel() - 1]  # committed since the last call, minus the last
        before = self.cached + pending.numel()  # what every row sees: the cache plus the pending tokens
        row_of = torch.arange(n_rows, device=rows.device).repeat_interleave(width)
        mask = torch.zeros(pending.numel() + n_rows * width, before + n_rows * width, dtype=torch.bool,
                           device=rows.device)
        mask[:, :before] = True  # the committed text attends to itself only, never to a block
        mask[pending.numel() :, before:] = row_of[:, None] == row_of[None, :]
        positions = torch.cat([
            torch.arange(self.cached, before, device=rows.device),
            torch.arange(before, before + width, device=rows.device).repeat(n_rows),
        ])
        row, column = masked.nonzero(as_tuple=True)
        keep = pending.numel() + row * width + column + self.offset
        ids = torch.cat([pending, rows.flatten()])
        logits = self._forward(ids[None], mask[None, None], keep, position_ids=positions[None],
                               use_cache=True, **cache_kwargs(self.model, self.cache))
        self.cache.crop(before - self.cache.get_seq_length())  # keep the committed text only
        self.cached = before
        return logits[0]
