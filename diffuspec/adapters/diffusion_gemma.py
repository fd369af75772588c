"""DiffusionGemma as a drafter: transformers 5.23's native block-diffusion LM (``DiffusionGemmaForBlockDiffusion``,
checkpoint ``google/diffusiongemma-26B-A4B-it``, Gemma 4's 262,144-token vocabulary), for a Gemma 4 target.

Its forward contract: a causal encoder (``model.model.encoder``) writes the context's keys and values into a
``DynamicCache``; a bidirectional decoder with the same weights reads that cache without appending and denoises
a canvas, ``forward(decoder_input_ids=canvas, past_key_values=cache, self_conditioning_logits=...)``, returning
unshifted logits (canvas position i predicts token i after the context). The canvas starts as uniform random
tokens (the model has no mask token), and each further pass conditions on the previous pass's logits.

Here: the encoder cache is exact and incremental (the encoder is causal, so encoding new tokens onto the cache
equals re-encoding the context); a draft of k tokens is a k-position canvas drawn from the request's generator,
S decoder passes (``denoising_steps``), and between passes the lowest-entropy positions keep their argmax while
the rest are redrawn (DiffusionGemma's entropy-bound sampler, greedy). Random drafting cannot touch the output:
the target verifies every token.

Verified on tiny random replicas (``tiny_diffusion_gemma_pair``): greedy output equals the Gemma 4 target's own
``generate`` and sampled output follows its distribution (tests/test_adapters.py); incremental encoding equals
re-encoding. Acceptance with the real 26B checkpoint was not measured here (no hub access).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..caches import cache_kwargs, new_cache, rollback
from ..drafters import Draft, Drafter

DEFAULT_ENTROPY_BOUND = 0.1  # DiffusionGemma's own sampler default (generation config ``sampler_config``)


def is_diffusion_gemma(model: object) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "diffusion_gemma"


class DiffusionGemmaDrafter(Drafter):
    """Drafts k tokens with S passes of DiffusionGemma's decoder over an exact, incremental encoder cache."""

    def __init__(self, model: PreTrainedModel, denoising_steps: int = 1, seed: int = 0) -> None:
        if denoising_steps < 1:
            raise ValueError(f"denoising_steps must be >= 1, got {denoising_steps}")
        self.model = model
        self.denoising_steps = denoising_steps
        self.vocab_size = model.config.text_config.vocab_size
        sampler = getattr(model.generation_config, "sampler_config", None)
        self.entropy_bound = getattr(sampler, "entropy_bound", None) or DEFAULT_ENTROPY_BOUND
        # Canvases come from the request's generator; without one, from a fixed seed (drafts stay reproducible).
        self._own_generator = torch.Generator(device=model.device).manual_seed(seed)
        self.reset()

    def reset(self) -> None:
        self.cache = None
        self.cached_ids = torch.empty(0, dtype=torch.long)

    def _encode(self, context: torch.Tensor) -> None:
        """Bring the encoder cache to exactly ``context``: keep the common prefix, encode the rest."""
        if self.cache is None:
            self.cache = new_cache(self.model)
        m = min(self.cached_ids.numel(), context.numel())
        differs = (self.cached_ids[:m] != context[:m].to(self.cached_ids.device)).nonzero()
        reuse = int(differs[0]) if differs.numel() else m
        if reuse < self.cached_ids.numel():
            rollback(self.cache, self.cached_ids.numel() - reuse)
        if reuse < context.numel():
            encoder = self.model.model.encoder
            encoder(input_ids=context[None, reuse:], use_cache=True, **cache_kwargs(encoder, self.cache))
            rollback(self.cache, 0)  # trim sliding layers: the decoder reads every key a layer holds
        self.cached_ids = context.clone()

    def _next_canvas(self, logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Keep the argmax at the lowest-entropy positions whose summed entropy (less the largest) stays within
        the bound; redraw the others uniformly."""
        entropy = torch.distributions.Categorical(logits=logits).entropy()
        sorted_entropy, order = entropy.sort(dim=-1)
        keep_sorted = sorted_entropy.cumsum(dim=-1) - sorted_entropy <= self.entropy_bound
        keep = keep_sorted.scatter(-1, order, keep_sorted)
        noise = torch.randint(self.vocab_size, logits.shape[:-1], generator=generator, device=logits.device)
        return torch.where(keep, logits.argmax(dim=-1), noise)

    @torch.inference_mode()
    def propose(self, context, k, sampling=None, generator=None) -> Draft:
        self._encode(context)
        generator = generator if generator is not None else self._own_generator
        canvas = torch.randint(self.vocab_size, (1, k), generator=generator, device=context.device)
        logits = None
        for step in range(self.denoising_steps):
            logits = self.model(decoder_input_ids=canvas, self_conditioning_logits=logits,
                                **cache_kwargs(self.model, self.cache)).logits
            if step + 1 < self.denoising_steps:
                canvas = self._next_canvas(logits, generator)
        return Draft(logprobs=logits[0].float().log_softmax(dim=-1), forwards=self.denoising_steps)


def tiny_diffusion_gemma_pair(vocab_size: int, *, sliding_window: int = 8, context: int = 256, seed: int = 0,
                              eos_token_id: int = 1, pad_token_id: int = 0):
    """A tiny random ``Gemma4ForCausalLM`` target and ``DiffusionGemmaForBlockDiffusion`` drafter sharing one
    vocabulary (sliding + global attention in both), for tests, ``diffuspec bench`` plumbing and the example.
    Weights are scaled up from the default init so random logits are peaked (no argmax ties)."""
    from transformers import (DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, Gemma4ForCausalLM,
                              Gemma4TextConfig, Gemma4VisionConfig)

    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, global_head_dim=8,
                sliding_window=sliding_window, layer_types=["sliding_attention", "full_attention"],
                max_position_embeddings=context, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                bos_token_id=None)
    target = Gemma4ForCausalLM(Gemma4TextConfig(**text, vocab_size_per_layer_input=vocab_size,
                                                hidden_size_per_layer_input=8))
    vision = Gemma4VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=2, head_dim=8)
    drafter = DiffusionGemmaForBlockDiffusion(DiffusionGemmaConfig(
        text_config=dict(text, num_experts=2, top_k_experts=1, moe_intermediate_size=16),
        vision_config=vision.to_dict(), canvas_length=16))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in (target, drafter):
            for p in model.parameters():
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return target.eval(), drafter.eval()
