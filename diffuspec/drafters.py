"""Drafters: one interface, small adapters (unshifted / shifted masked diffusion, AR draft model, prompt lookup).

A drafter sees the committed tokens and proposes up to k more. It answers with either
- ``logprobs``: one distribution per position from one pass (a diffusion drafter); the decoding loop then
  chooses the path (CPS, argmax, or a sample for the Leviathan rule), or
- ``tokens``: a finished draft (AR drafter, prompt lookup), with ``probs`` when the tokens were sampled.
Whatever a drafter proposes, only tokens the target verifies are ever emitted, so drafting may be
approximate (a reused prefix cache) without touching the output.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from .caches import cache_kwargs, has_sliding_window, new_cache, rollback
from .verification import SamplingParams


@dataclass
class Draft:
    tokens: torch.Tensor | None = None  # [d] a finished draft
    probs: torch.Tensor | None = None  # [d, V] the distributions ``tokens`` were sampled from
    logprobs: torch.Tensor | None = None  # [d, V] per-position distributions; the loop picks the path
    forwards: int = 0  # drafter forward passes spent


class Drafter(ABC):
    # Indices into the target's ``hidden_states`` output (0: the embeddings) this drafter reads (a DFlash drafter
    # conditions on target layers); empty: the target's verification passes need not return any.
    hidden_layers: tuple[int, ...] = ()
    max_draft: int | None = None  # the most tokens one proposal can hold (a fixed block size); None: any number

    def reset(self) -> None:
        """Forget any state kept from an earlier generation."""

    def observe_hidden_states(self, states: torch.Tensor) -> None:
        """The target's hidden states at ``hidden_layers`` (concatenated: [m, len(hidden_layers) * hidden]) for
        the next m committed positions, in order; called only when ``hidden_layers`` is not empty."""

    @abstractmethod
    def propose(
        self,
        context: torch.Tensor,
        k: int,
        sampling: SamplingParams | None = None,
        generator: torch.Generator | None = None,
    ) -> Draft:
        """Propose up to ``k`` tokens after ``context`` ([n] committed token ids).

        ``sampling`` is given only when the loop wants a draft *sampled* from the drafter (Leviathan rule);
        a drafter that can sample then returns the probabilities it sampled from.
        """


def _supports_logits_to_keep(model: PreTrainedModel) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


class CachedPrefixModel:
    """A model plus a KV cache over a token prefix, reused while the next input extends it.

    ``forward(context, extra)`` runs ``context + extra`` but feeds only what the cache lacks (at least the
    positions whose logits are needed), then drops ``extra`` from the cache again unless ``keep_extra``.
    """

    def __init__(self, model: PreTrainedModel, use_cache: bool = True, bidirectional: bool = False) -> None:
        self.model = model
        self.use_cache = use_cache
        # An explicit all-True 4D mask for a bidirectional model: transformers then skips building one from
        # mask functions, which cost as much as the drafter's whole forward on CPU. Not with sliding-window
        # layers: they hold fewer keys and need windowed masks of their own.
        self.bidirectional = bidirectional and not has_sliding_window(model)
        self._keep_arg = _supports_logits_to_keep(model)
        self.reset()

    def reset(self) -> None:
        self.cache: DynamicCache | None = None
        self.cached_ids = torch.empty(0, dtype=torch.long)

    def forward(
        self, context: torch.Tensor, extra: torch.Tensor, logits_needed: int, keep_extra: bool = False
    ) -> torch.Tensor:
        """Logits [logits_needed, V] of the last ``logits_needed`` positions of ``context + extra``."""
        reuse = 0
        if self.use_cache and self.cache is not None:
            m = min(self.cached_ids.numel(), context.numel() + extra.numel() - logits_needed)
            differs = (self.cached_ids[:m] != context[:m]).nonzero()
            reuse = int(differs[0]) if differs.numel() else m
            if reuse < self.cached_ids.numel():  # no trimming otherwise: a later truncate may need the record
                rollback(self.cache, self.cached_ids.numel() - reuse)
        elif self.use_cache:
            self.cache = new_cache(self.model)
        feed = torch.cat([context[reuse:], extra]).unsqueeze(0)
        kwargs = {"logits_to_keep": logits_needed} if self._keep_arg else {}
        if self.bidirectional:
            kwargs["attention_mask"] = torch.ones(
                1, 1, feed.shape[1], reuse + feed.shape[1], dtype=torch.bool, device=feed.device
            )
        out = self.model(input_ids=feed, use_cache=self.use_cache, **cache_kwargs(self.model, self.cache), **kwargs)
        if self.use_cache:
            self.cached_ids = torch.cat([context, extra]) if keep_extra else context
            if not keep_extra:
                rollback(self.cache, extra.numel())
        return out.logits[0, -logits_needed:]

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` cached ids only (exact: what is dropped was fed since the last rollback)."""
        if self.cache is not None:
            rollback(self.cache, self.cached_ids.numel() - length)
            self.cached_ids = self.cached_ids[:length]


class MaskedDiffusionDrafter(Drafter):
    """A masked-diffusion LM drafting ``k`` masked positions after the context.

    ``shifted=False``: LLaDA/MDLM style, the logits at a masked position predict it.
    ``shifted=True``: Dream style (adapted from an AR model), the logits at position t predict token t + 1.
    ``denoising_steps`` > 1 unmasks the most confident positions step by step (greedy), each position keeping
    the distribution it was unmasked with. ``prefix_cache`` reuses the context's keys and values from the
    previous draft, computed when the context still attended to masks: an approximation of a bidirectional
    model that costs acceptance, never correctness.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        mask_token_id: int,
        *,
        shifted: bool = False,
        denoising_steps: int = 1,
        prefix_cache: bool = False,
    ) -> None:
        if denoising_steps < 1:
            raise ValueError(f"denoising_steps must be >= 1, got {denoising_steps}")
        self.mask_token_id = mask_token_id
        self.shifted = shifted
        self.denoising_steps = denoising_steps
        self._model = CachedPrefixModel(model, use_cache=prefix_cache, bidirectional=True)

    def reset(self) -> None:
        self._model.reset()

    def _block_logprobs(self, context: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        k = block.numel()
        logits = self._model.forward(context, block, logits_needed=k + 1)
        return (logits[:-1] if self.shifted else logits[1:]).float().log_softmax(dim=-1)

    @torch.inference_mode()
    def propose(self, context, k, sampling=None, generator=None) -> Draft:
        block = torch.full((k,), self.mask_token_id, dtype=torch.long, device=context.device)
        logprobs = self._block_logprobs(context, block)
        if self.denoising_steps == 1:
            return Draft(logprobs=logprobs, forwards=1)
        # Unmask the most confident positions a share at a time; keep each position's distribution
        # from the pass that decided it.
        chosen = logprobs.clone()
        masked = torch.ones(k, dtype=torch.bool, device=context.device)
        per_step = -(-k // self.denoising_steps)
        forwards = 1
        while True:
            confidence = logprobs.max(dim=-1).values.masked_fill(~masked, float("-inf"))
            picks = confidence.topk(min(per_step, int(masked.sum()))).indices
            block[picks] = logprobs[picks].argmax(dim=-1)
            chosen[picks] = logprobs[picks]
            masked[picks] = False
            if not masked.any():
                return Draft(logprobs=chosen, forwards=forwards)
            logprobs = self._block_logprobs(context, block)
            forwards += 1


class ARDrafter(Drafter):
    """A small autoregressive draft model (classic speculative decoding), with an exact KV cache. Between
    proposals the cache holds committed tokens only, so a rejected tail is dropped within the rollback rule
    (``caches``) even by sliding-window layers."""

    def __init__(self, model: PreTrainedModel) -> None:
        self._model = CachedPrefixModel(model)

    def reset(self) -> None:
        self._model.reset()

    @torch.inference_mode()
    def propose(self, context, k, sampling=None, generator=None) -> Draft:
        tokens, probs = [], []
        committed = context.numel()
        extra = context[:0]
        for _ in range(k):
            logits = self._model.forward(context, extra, logits_needed=1, keep_extra=True)[-1]
            context = torch.cat([context, extra])
            if sampling is None:
                token = logits.argmax(dim=-1, keepdim=True)
            else:
                p = sampling.probs(logits)
                token = torch.multinomial(p, 1, generator=generator)
                probs.append(p)
            tokens.append(token)
            extra = token
        self._model.truncate(committed)
        return Draft(
            tokens=torch.cat(tokens),
            probs=torch.stack(probs) if probs else None,
            forwards=k,
        )


class PromptLookupDrafter(Drafter):
    """Prompt lookup decoding: find the latest earlier occurrence of the context's last n-gram (longest
    n first) and propose the tokens that followed it. No model; deterministic."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, context, k, sampling=None, generator=None) -> Draft:
        n_ctx = context.numel()
        for n in range(min(self.max_ngram, n_ctx - 1), self.min_ngram - 1, -1):
            windows = context.unfold(0, n, 1)[:-1]  # every earlier n-gram, the final one excluded
            hits = (windows == context[n_ctx - n :]).all(dim=-1).nonzero()
            if hits.numel():
                start = int(hits[-1]) + n
                return Draft(tokens=context[start : start + k])
        return Draft(tokens=context[:0])
