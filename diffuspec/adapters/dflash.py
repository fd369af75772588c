"""DFlash drafters (transformers' ``speculation_type="dflash"`` architecture) inside our loop.

A DFlash drafter is a small bidirectional transformer without embeddings of its own: it embeds its block
``[last committed token, mask x (block_size - 1)]`` with the target's input embeddings, reads the target's
hidden states at ``config.target_layer_ids`` for every earlier committed token (projected once into its own KV
cache, so the cache is exact: it depends on committed tokens only) and scores the block with the target's LM
head. One pass gives ``block_size - 1`` per-position distributions: a lattice like a diffusion drafter's, so
the loop's path search and length policy apply unchanged. This module mirrors transformers'
``DFlashTokenCandidateGenerator`` step for step (positions, cache cropping), so one drafter runs in both loops.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DFlashCache

from ..caches import cache_kwargs
from ..drafters import Draft, Drafter

DFLASH_MODEL_TYPES = ("muse_glimmer_assistant",)  # the DFlash architectures transformers ships


def is_dflash(model: object) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) in DFLASH_MODEL_TYPES


class DFlashDrafter(Drafter):
    """``model`` (a DFlash drafter) drafting for ``target``, whose embeddings and LM head it borrows."""

    def __init__(self, target: PreTrainedModel, model: PreTrainedModel) -> None:
        if not is_dflash(model):
            raise ValueError(f"{type(model).__name__} is not a DFlash drafter (model_type in {DFLASH_MODEL_TYPES})")
        config = model.config
        n_layers = target.config.get_text_config().num_hidden_layers
        if max(config.target_layer_ids) >= n_layers or config.hidden_size != target.get_input_embeddings().embedding_dim:
            raise ValueError(
                f"this DFlash drafter was built for another target: it reads layers {config.target_layer_ids} of "
                f"width {config.hidden_size}, the target has {n_layers} layers of width "
                f"{target.get_input_embeddings().embedding_dim}. Train one for this target (`diffuspec train-dflash`)."
            )
        self.model, self.target = model, target
        self.block_size, self.mask_token_id = config.block_size, config.mask_token_id
        # hidden_states[0] is the embeddings, so target layer i is entry i + 1 (as transformers reads it)
        self.hidden_layers = tuple(i + 1 for i in config.target_layer_ids)
        self.reset()

    @property
    def max_draft(self) -> int:
        """Draft tokens one pass gives: the block but its anchor."""
        return self.block_size - 1

    def reset(self) -> None:
        self.cache = DFlashCache(config=self.model.config)
        self.cached = 0  # committed positions whose context is in the cache
        self.pending: list[torch.Tensor] = []  # target hidden states not yet in the cache

    def observe_hidden_states(self, states: torch.Tensor) -> None:
        self.pending.append(states)

    @torch.inference_mode()
    def propose(self, context, k, sampling=None, generator=None) -> Draft:
        width = len(self.hidden_layers) * self.model.config.hidden_size
        fresh = torch.cat(self.pending) if self.pending else torch.zeros(0, width, device=context.device)
        if self.cached + fresh.shape[0] != context.numel() - 1:
            raise RuntimeError(
                f"the DFlash drafter holds target hidden states for {self.cached + fresh.shape[0]} positions but the "
                f"context has {context.numel()} tokens: its proposer must pass every committed position's states"
            )
        block = torch.full((self.block_size,), self.mask_token_id, dtype=torch.long, device=context.device)
        block[0] = context[-1]
        positions = torch.arange(self.cached, context.numel() - 1 + self.block_size, device=context.device)
        self.cache.set_previous_accepted_tokens(fresh.shape[0])
        hidden = self.model(
            noise_embeds=self.target.get_input_embeddings()(block)[None].to(self.model.dtype),
            context_hidden_states=fresh[None].to(self.model.dtype),
            position_ids=positions[None],
            **cache_kwargs(self.model, self.cache),
        ).last_hidden_state[0, 1 : 1 + min(k, self.max_draft)]
        self.cache.crop(-self.block_size)  # keep the context, drop the block
        self.cached += fresh.shape[0]
        self.pending = []
        logits = self.target.get_output_embeddings()(hidden.to(self.target.dtype))
        return Draft(logprobs=logits.float().log_softmax(dim=-1), forwards=1)
