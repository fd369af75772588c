"""Drafter adapters: which ``Drafter`` drives a given model. The choice is made here, once per engine, from what
the model is; the decoding loop only ever sees the ``Drafter`` interface.

- an autoregressive draft model: ``ARDrafter`` (exact KV cache);
- DiffusionGemma (native, ``diffusion_gemma.py``): its own canvas and encoder cache;
- any other diffusion LM: ``MaskedDiffusionDrafter`` (unshifted LLaDA/MDLM style, or Dream-style shifted), with
  the prefix cache where the model takes one (``caches.accepts_cache``; LLaDA does not);
- a model with its own tokenizer (``DrafterWithTokenizer``): the above, wrapped to translate through text;
- a drafter that borrows the target's embeddings and reads its hidden states (``bound_drafter_factory``): the
  block drafter (``block_drafter.py``, ``diffuspec train-drafter``) and DFlash (``dflash.py``), made with the target.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..caches import accepts_cache, check_rollback
from ..config import DiffuSpecConfig
from ..drafters import ARDrafter, Drafter, MaskedDiffusionDrafter
from ..pairing import resolve_logits_shift, resolve_mask_token
from .block_drafter import BlockDrafter, draft_head, is_block_drafter
from .dflash import DFlashDrafter, is_dflash
from .diffusion_gemma import DiffusionGemmaDrafter, is_diffusion_gemma, tiny_diffusion_gemma_pair
from .text_bridge import DrafterWithTokenizer, TextTranslatingDrafter, shares_vocabulary

__all__ = ["BlockDrafter", "DFlashDrafter", "DiffusionGemmaDrafter", "DrafterWithTokenizer", "TextTranslatingDrafter",
           "bound_drafter_factory", "drafter_factory", "shares_vocabulary", "tiny_diffusion_gemma_pair"]


def bound_drafter_factory(model: object, target: PreTrainedModel) -> Callable[[], Drafter] | None:
    """How to make a request's drafter for a model that drafts with the target's own parts (its embeddings, LM
    head rows, hidden states), checked against ``target`` now; None for any other model."""
    if is_block_drafter(model):
        model = model.to(device=target.device, dtype=target.dtype)  # stored in bfloat16; run as the target runs
        head = draft_head(target, model)  # shared by the requests: read-only
        BlockDrafter(target, model, head)  # refuses a drafter made for another target, now
        return lambda: BlockDrafter(target, model, head)
    if is_dflash(model):
        DFlashDrafter(target, model)
        return lambda: DFlashDrafter(target, model)
    return None


def drafter_factory(
    model: PreTrainedModel | DrafterWithTokenizer,
    *,
    autoregressive: bool,
    tokenizer: PreTrainedTokenizerBase,
    config: DiffuSpecConfig,
    mask_token_id: int | None,
    vocab_size: int,
    eos_token_ids: Collection[int],
) -> Callable[[], Drafter]:
    """How to make a request's drafter for ``model`` (checked now; a fresh drafter, with fresh caches, per call).
    ``tokenizer`` is the target's; ``mask_token_id`` the caller's override of the drafter's mask token."""
    if isinstance(model, DrafterWithTokenizer):
        own = model
        inner = drafter_factory(own.model, autoregressive=autoregressive, tokenizer=own.tokenizer, config=config,
                                mask_token_id=mask_token_id, vocab_size=vocab_size, eos_token_ids=eos_token_ids)
        return lambda: TextTranslatingDrafter(inner(), own.tokenizer, tokenizer, target_vocab_size=vocab_size,
                                              target_eos_ids=eos_token_ids)
    if autoregressive:
        check_rollback(model, "AR drafter")
        return lambda: ARDrafter(model)
    if is_diffusion_gemma(model):
        return lambda: DiffusionGemmaDrafter(model, denoising_steps=config.denoising_steps)
    mask = resolve_mask_token(tokenizer, model, mask_token_id)
    shifted = resolve_logits_shift(model, config.logits_shift)
    prefix_cache = config.drafter_prefix_cache and accepts_cache(model)
    return lambda: MaskedDiffusionDrafter(model, mask, shifted=shifted, denoising_steps=config.denoising_steps,
                                          prefix_cache=prefix_cache)
