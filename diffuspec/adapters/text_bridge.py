"""Drafters with a tokenizer other than the target's: drafts cross over as text.

Two tokenizers **share a vocabulary** when every token of the target's has the same id in the drafter's; the
drafter may add tokens of its own (Dream adds ``<|mask|>`` at 151666 to Qwen2.5's vocabulary). Such a drafter
works on the target's ids directly, and ids only it has are never proposed (``proposers._fit_vocab``).

Otherwise (a Llama-family target with a Dream or LLaDA drafter, say) the committed tokens are detokenized with
the target's tokenizer and retokenized with the drafter's, the drafter proposes in its own vocabulary, and its
argmax draft is detokenized and retokenized into target ids: a finished, deterministic draft, as in
transformers' universal assisted generation. The target decides every committed token, so greedy output and the
sampled distribution are the target's own (a deterministic draft is verified by the point-mass / Gumbel rule).
Only acceptance depends on how well the text round trip lines up; CPS does not apply (its lattice is in the
drafter's vocabulary).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from itertools import takewhile

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..drafters import Draft, Drafter


def shares_vocabulary(drafter: PreTrainedTokenizerBase, target: PreTrainedTokenizerBase) -> bool:
    """Every target token has the same id in the drafter's vocabulary (which may hold more)."""
    drafter_vocab = drafter.get_vocab()
    return all(drafter_vocab.get(token) == i for token, i in target.get_vocab().items())


@dataclass(frozen=True)
class DrafterWithTokenizer:
    """A drafter model that speaks its own tokenizer: pass it as ``DiffuSpec(target, DrafterWithTokenizer(model,
    tokenizer), target_tokenizer)`` (``from_pretrained`` does so by itself when the tokenizers differ)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


class TextTranslatingDrafter(Drafter):
    """Wraps a drafter working in another vocabulary; proposes target ids (module docstring)."""

    def __init__(self, inner: Drafter, drafter_tokenizer: PreTrainedTokenizerBase,
                 target_tokenizer: PreTrainedTokenizerBase, *, target_vocab_size: int,
                 target_eos_ids: Collection[int]) -> None:
        self.inner = inner
        self.drafter_tokenizer, self.target_tokenizer = drafter_tokenizer, target_tokenizer
        self.target_vocab_size = target_vocab_size
        self.drafter_eos = drafter_tokenizer.eos_token_id
        self.target_eos = min(target_eos_ids) if target_eos_ids else None

    def reset(self) -> None:
        self.inner.reset()

    def _to_drafter_ids(self, text: str, device: torch.device) -> torch.Tensor:
        ids = self.drafter_tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long, device=device)

    def _to_target_ids(self, context_text: str, context: list[int], new_text: str) -> list[int]:
        """``new_text`` as target tokens continuing ``context``: re-encode the joined text and keep what follows
        the committed ids; where tokenization merges across the boundary, encode the new text alone."""
        joined = self.target_tokenizer(context_text + new_text, add_special_tokens=False)["input_ids"]
        if joined[: len(context)] == context:
            return joined[len(context):]
        return self.target_tokenizer(new_text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def propose(self, context, k, sampling=None, generator=None) -> Draft:
        committed = context.tolist()
        context_text = self.target_tokenizer.decode(committed)
        drafter_context = self._to_drafter_ids(context_text, context.device)
        if drafter_context.numel() == 0:  # nothing the drafter can read (a context of special tokens only)
            return Draft(tokens=context[:0])
        draft = self.inner.propose(drafter_context, k)  # deterministic: no sampling asked of the inner drafter
        drafted = (draft.logprobs.argmax(dim=-1) if draft.logprobs is not None else draft.tokens).tolist()
        ends = self.drafter_eos is not None and self.drafter_eos in drafted
        if ends:  # an end of text crosses over as the target's own EOS token
            drafted = drafted[: drafted.index(self.drafter_eos)]
        prefix_text = self.drafter_tokenizer.decode(drafter_context.tolist())
        full_text = self.drafter_tokenizer.decode(drafter_context.tolist() + drafted)
        new_text = full_text[len(prefix_text):] if full_text.startswith(prefix_text) else ""
        tokens = self._to_target_ids(context_text, committed, new_text) if new_text else []
        if ends and self.target_eos is not None:
            tokens.append(self.target_eos)
        tokens = list(takewhile(lambda t: t < self.target_vocab_size, tokens[:k]))  # a draft stays contiguous
        return Draft(tokens=torch.tensor(tokens, dtype=torch.long, device=context.device), forwards=draft.forwards)
