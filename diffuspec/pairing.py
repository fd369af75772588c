"""What a target and its drafters must agree on: vocabulary size, context window, EOS ids, the drafter's mask
token and whether its logits are shifted, one device and one tokenizer. Read from the models alone (no engine),
so the engine, the drafter adapters and training all use the same rules."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .errors import DiffuSpecError


def context_window(config: Any) -> int:
    """The longest sequence a model takes, from its config."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise DiffuSpecError(
        f"cannot tell the context window of a {type(config).__name__}: set config.max_position_embeddings"
    )


def vocab_size(model: PreTrainedModel) -> int:
    """Output tokens of ``model`` (its LM head's rows, which may pad the tokenizer's vocabulary)."""
    return model.get_output_embeddings().weight.shape[0]


def eos_token_ids(target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """The ids that end a generation: the target's generation config, else the tokenizer's EOS."""
    eos = target.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return frozenset([] if eos is None else [eos] if isinstance(eos, int) else eos)


def resolve_mask_token(
    tokenizer: PreTrainedTokenizerBase, drafter: PreTrainedModel, mask_token_id: int | None = None
) -> int:
    """The drafter's mask token: given explicitly, else the tokenizer's, else the drafter config's."""
    for candidate in (mask_token_id, tokenizer.mask_token_id, getattr(drafter.config, "mask_token_id", None)):
        if candidate is not None:
            if not 0 <= candidate < vocab_size(drafter):
                raise DiffuSpecError(f"mask token id {candidate} is outside the drafter's vocabulary")
            return candidate
    raise DiffuSpecError(
        "the drafter has no mask token: neither the tokenizer (mask_token) nor the drafter's config "
        "(mask_token_id) names one. Pass mask_token_id=<id of the drafter's [MASK] token>."
    )


def resolve_logits_shift(drafter: PreTrainedModel, logits_shift: bool | None = None) -> bool:
    """Whether the drafter's logits are Dream-style shifted: as given, else as its config records
    (``diffuspec_shifted_logits``), else true for Dream checkpoints."""
    if logits_shift is not None:
        return logits_shift
    recorded = getattr(drafter.config, "diffuspec_shifted_logits", None)
    return recorded if recorded is not None else getattr(drafter.config, "model_type", "") == "dream"


def check_pair_model(target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, role: str,
                     *, translated: bool = False) -> None:
    """``model`` (the drafter, or the AR drafter, named by ``role``) can draft for ``target``: same device, and,
    unless its drafts are ``translated`` through text, output rows for every token of the target's tokenizer."""
    if model.device != target.device:
        raise DiffuSpecError(
            f"the target is on {target.device} but the {role} is on {model.device}: put both on one device "
            f"(model.to(device), or DiffuSpec.from_pretrained(..., device=...))"
        )
    n_tokens, n_model, n_target = len(tokenizer), vocab_size(model), vocab_size(target)
    if not translated and min(n_model, n_target) < n_tokens:
        raise DiffuSpecError(
            f"the {role} has {n_model} output tokens and the target {n_target}, but the tokenizer has "
            f"{n_tokens}: the models do not share this tokenizer. Use a {role} trained with the target's "
            f"tokenizer."
        )
