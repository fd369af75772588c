"""The decoding loop: draft, choose a path, verify, keep the longest correct prefix plus the target's token.

Every mode runs this one loop; only the drafter differs ("ar" drafts nothing, so each step is one plain
KV-cached target step). The target's KV cache always holds every committed token but the last, which is fed
first in the next verification pass together with the draft; rejected positions are cropped away.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from .aio import aiterate
from .config import DiffuSpecConfig, DiffuSpecError
from .draft_length import ADLState, adl_update, generated_length
from .drafters import ARDrafter, Draft, Drafter, MaskedDiffusionDrafter, PromptLookupDrafter
from .path_search import CorpusNGram, NGramProxy, PathSearch
from .stats import DecodingStats
from .stopping import find_stop, safe_length
from .verification import SamplingParams, greedy_accept, sample_accept


@dataclass
class StepEvent:
    """One verification step, as streamed."""

    text: str  # new text, safe to show: never part of a stop string
    token_ids: list[int]  # tokens committed this step
    draft_length: int
    accepted: int  # draft tokens accepted (the target's own token excluded)
    stats: DecodingStats  # running totals of the generation (a live object: copy it to keep it)
    finish_reason: str | None = None  # "eos" | "length" | "stop" on the last event


@dataclass
class Generation:
    text: str  # the generated text only, never the prompt
    token_ids: list[int]
    finish_reason: str  # "eos" | "length" | "stop"
    stats: DecodingStats


class _Collected:
    """Folds a stream of step events into one Generation."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.last: StepEvent | None = None

    def add(self, event: StepEvent) -> None:
        self.text.append(event.text)
        self.token_ids += event.token_ids
        self.last = event

    def generation(self) -> Generation:
        return Generation("".join(self.text), self.token_ids, self.last.finish_reason, self.last.stats)


_DEFAULTS = dict(max_new_tokens=256, temperature=0.0, top_k=None, top_p=None, stop=None, seed=None, mode=None)


@dataclass(frozen=True)
class _Request:
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    stops: tuple[str, ...]
    seed: int | None
    drafter: Drafter | None


def context_window(config: Any) -> int:
    """The longest sequence a model takes, from its config."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise DiffuSpecError(
        f"cannot tell the context window of a {type(config).__name__}: set config.max_position_embeddings"
    )


def _vocab_size(model: PreTrainedModel) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _fit_vocab(x: torch.Tensor, size: int, fill: float) -> torch.Tensor:
    """Drafter and target may pad their vocabularies differently; align the drafter's to the target's."""
    if x.shape[-1] >= size:
        return x[..., :size]
    return torch.nn.functional.pad(x, (0, size - x.shape[-1]), value=fill)


def resolve_mask_token(
    tokenizer: PreTrainedTokenizerBase, drafter: PreTrainedModel, mask_token_id: int | None = None
) -> int:
    """The drafter's mask token: given explicitly, else the tokenizer's, else the drafter config's."""
    for candidate in (mask_token_id, tokenizer.mask_token_id, getattr(drafter.config, "mask_token_id", None)):
        if candidate is not None:
            if not 0 <= candidate < _vocab_size(drafter):
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


class DiffuSpec:
    """Lossless speculative decoding of ``target`` with a one-pass diffusion ``drafter``.

    ``drafter`` is a masked-diffusion HF model or any ``Drafter``; ``ar_drafter`` an optional small AR model
    for ``mode="ar-drafter"``; ``cps_ngram`` an optional corpus n-gram table for CPS's causal proxy (a drafter
    directory's ``cps_ngram.safetensors``). One generation runs at a time per engine.
    """

    def __init__(
        self,
        target: PreTrainedModel,
        drafter: PreTrainedModel | Drafter | None,
        tokenizer: PreTrainedTokenizerBase,
        config: DiffuSpecConfig | None = None,
        *,
        ar_drafter: PreTrainedModel | None = None,
        mask_token_id: int | None = None,
        cps_ngram: CorpusNGram | None = None,
    ) -> None:
        self.target, self.tokenizer = target, tokenizer
        self.config = config or DiffuSpecConfig()
        self._drafter_model, self._ar_drafter_model = drafter, ar_drafter
        self._mask_token_id = mask_token_id
        self.context_window = context_window(target.config)
        self.vocab_size = _vocab_size(target)
        self.eos_token_ids = self._eos_ids()
        self.device = target.device
        self._drafters = self._build_drafters()
        cfg = self.config
        if cps_ngram is not None and cps_ngram.vocab_size != self.vocab_size:
            raise DiffuSpecError(
                f"the CPS n-gram table counts {cps_ngram.vocab_size} tokens but the target has {self.vocab_size}: "
                "it belongs to another tokenizer. Rebuild it for this pair (`diffuspec align` writes one) or "
                "leave it out."
            )
        self._cps_ngram = cps_ngram
        self._path_search = PathSearch(
            enabled=cfg.cps,
            beam_width=cfg.cps_beam_width,
            tau=cfg.cps_tau,
            max_candidates=cfg.cps_max_candidates,
            lam=cfg.cps_lambda if cfg.cps_lambda is not None else 0.5 if cps_ngram else 0.9,
        )
        self._proxy = NGramProxy(self.vocab_size, cfg.ngram_order, cps_ngram, cfg.cps_corpus_weight)
        self._lock = threading.Lock()
        self._owner: int | None = None  # thread id of the running generation
        self._require_mode(cfg.mode)

    @classmethod
    def from_pretrained(
        cls,
        target: str | None = None,
        drafter: str | None = None,
        *,
        ar_drafter: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        device_map: str | dict | None = None,
        mask_token_id: int | None = None,
        config: DiffuSpecConfig | None = None,
        trust_remote_code: bool = False,
    ) -> DiffuSpec:
        """Load a pair by hub id or local path; with no ``target``, the embedded demo pair."""
        from .loading import load_models

        models = load_models(
            target,
            drafter,
            ar_drafter=ar_drafter,
            device=device,
            dtype=dtype,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
        )
        return cls(
            models.target,
            models.drafter,
            models.tokenizer,
            config,
            ar_drafter=models.ar_drafter,
            mask_token_id=mask_token_id,
            cps_ngram=models.cps_ngram,
        )

    def with_config(self, **changes: Any) -> DiffuSpec:
        """A new engine on the same models with some knobs changed (for ablations)."""
        return DiffuSpec(
            self.target,
            self._drafter_model,
            self.tokenizer,
            replace(self.config, **changes),
            ar_drafter=self._ar_drafter_model,
            mask_token_id=self._mask_token_id,
            cps_ngram=self._cps_ngram,
        )

    @property
    def ar_drafter_model(self) -> PreTrainedModel | None:
        """The AR draft model behind ``mode="ar-drafter"``, if any."""
        return self._ar_drafter_model

    @property
    def cps_ngram(self) -> CorpusNGram | None:
        """The corpus n-gram table in CPS's causal proxy, if the engine has one."""
        return self._cps_ngram

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes this engine can run (those whose drafter it has)."""
        return tuple(self._drafters)

    # ----- set-up checks -------------------------------------------------------------------------------

    def _eos_ids(self) -> frozenset[int]:
        eos = self.target.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return frozenset([] if eos is None else [eos] if isinstance(eos, int) else eos)

    def _check_pair_model(self, model: PreTrainedModel, role: str) -> None:
        if model.device != self.device:
            raise DiffuSpecError(
                f"the target is on {self.device} but the {role} is on {model.device}: put both on one device "
                f"(model.to(device), or DiffuSpec.from_pretrained(..., device=...))"
            )
        n_tokens, n_model = len(self.tokenizer), _vocab_size(model)
        if min(n_model, self.vocab_size) < n_tokens:
            raise DiffuSpecError(
                f"the {role} has {n_model} output tokens and the target {self.vocab_size}, but the tokenizer has "
                f"{n_tokens}: the models do not share this tokenizer. Use a {role} trained with the target's "
                f"tokenizer."
            )

    def _build_drafters(self) -> dict[str, Drafter | None]:
        cfg = self.config
        drafters: dict[str, Drafter | None] = {
            "ar": None,
            "prompt-lookup": PromptLookupDrafter(max_ngram=cfg.prompt_lookup_max_ngram),
        }
        model = self._drafter_model
        if isinstance(model, Drafter):
            drafters["diffuspec"] = model
        elif model is not None:
            self._check_pair_model(model, "drafter")
            drafters["diffuspec"] = MaskedDiffusionDrafter(
                model,
                resolve_mask_token(self.tokenizer, model, self._mask_token_id),
                shifted=resolve_logits_shift(model, cfg.logits_shift),
                denoising_steps=cfg.denoising_steps,
                prefix_cache=cfg.drafter_prefix_cache,
            )
        if self._ar_drafter_model is not None:
            self._check_pair_model(self._ar_drafter_model, "AR drafter")
            drafters["ar-drafter"] = ARDrafter(self._ar_drafter_model)
        return drafters

    def _require_mode(self, mode: str) -> Drafter | None:
        if mode not in self._drafters:
            needs = {"diffuspec": "a diffusion drafter (drafter=...)", "ar-drafter": "ar_drafter=..."}
            raise DiffuSpecError(f"mode {mode!r} needs {needs.get(mode, 'a known mode')}; this engine has none")
        return self._drafters[mode]

    def _prepare(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        stop: str | Sequence[str] | None,
        seed: int | None,
        mode: str | None,
    ) -> _Request:
        if isinstance(prompt, str):
            if not prompt:
                raise DiffuSpecError("the prompt is empty: give at least one character of text")
            prompt_ids = self.tokenizer(prompt)["input_ids"]
        else:
            prompt_ids = [int(t) for t in prompt]
        if not prompt_ids:
            raise DiffuSpecError("the prompt is empty: give at least one token")
        if len(prompt_ids) >= self.context_window:
            raise DiffuSpecError(
                f"the prompt has {len(prompt_ids)} tokens but the target's context window is "
                f"{self.context_window}: shorten the prompt to at most {self.context_window - 1} tokens"
            )
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise DiffuSpecError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
            raise DiffuSpecError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise DiffuSpecError(f"top_p must be in (0, 1], got {top_p!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise DiffuSpecError(f"top_k must be a positive integer, got {top_k!r}")
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if any(not isinstance(s, str) or not s for s in stops):
            raise DiffuSpecError(f"stop strings must be non-empty strings, got {stops!r}")
        return _Request(
            prompt_ids=prompt_ids,
            max_new_tokens=max_new_tokens,
            sampling=SamplingParams(float(temperature), top_k, top_p),
            stops=stops,
            seed=seed,
            drafter=self._require_mode(mode or self.config.mode),
        )

    # ----- generation ----------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        mode: str | None = None,
    ) -> Generation:
        """Generate a continuation of ``prompt`` (text, or token ids used as they are)."""
        collected = _Collected()
        for event in self.stream(prompt, max_new_tokens, temperature, top_k, top_p, stop, seed, mode):
            collected.add(event)
        return collected.generation()

    def stream(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        mode: str | None = None,
    ) -> Iterator[StepEvent]:
        """Like ``generate``, one ``StepEvent`` per verification step. Arguments are checked now; closing
        the iterator early stops generation and frees the engine."""
        request = self._prepare(prompt, max_new_tokens, temperature, top_k, top_p, stop, seed, mode)
        return self._decode(request)

    async def astream(self, prompt: str | Sequence[int], **kwargs: Any) -> AsyncIterator[StepEvent]:
        """``stream`` for async code: generation runs in a worker thread, the event loop keeps running, and
        leaving the ``async for`` early (or cancelling) stops generation before the next step."""
        request = self._prepare(prompt, **{**_DEFAULTS, **kwargs})
        async for event in aiterate(lambda: self._decode(request)):
            yield event

    async def agenerate(self, prompt: str | Sequence[int], **kwargs: Any) -> Generation:
        """``generate`` for async code (see ``astream``)."""
        collected = _Collected()
        async for event in self.astream(prompt, **kwargs):
            collected.add(event)
        return collected.generation()

    def _clock(self) -> float:
        if self.device.type == "cuda":  # time what the GPU did, not what was queued
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _choose_path(
        self, draft: Draft, history: list[int], sampling: SamplingParams | None, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
        """Draft tokens, the distributions they were sampled from (None: deterministic), raw drafter output."""
        if draft.logprobs is None:
            tokens = draft.tokens
            return tokens, draft.probs, tokens.tolist()
        logprobs = _fit_vocab(draft.logprobs, self.vocab_size, float("-inf"))
        raw = logprobs.argmax(dim=-1).tolist()
        if sampling is not None:
            probs = sampling.probs(logprobs)
            return torch.multinomial(probs, 1, generator=generator).squeeze(1), probs, raw
        path = self._path_search(logprobs, history, self._proxy, self.eos_token_ids)
        return torch.tensor(path, dtype=torch.long, device=self.device), None, raw

    @torch.inference_mode()
    def _decode(self, request: _Request) -> Iterator[StepEvent]:
        if self._owner == threading.get_ident():
            raise DiffuSpecError(
                "this engine is already generating in this thread (an unfinished stream): exhaust or close() "
                "that stream first, or use a second engine"
            )
        with self._lock:
            self._owner = threading.get_ident()
            try:
                yield from self._loop(request)
            finally:
                self._owner = None
                if request.drafter is not None:
                    request.drafter.reset()  # drop its caches: an abandoned stream frees memory now

    def _loop(self, request: _Request) -> Iterator[StepEvent]:
        cfg, sampling, drafter = self.config, request.sampling, request.drafter
        stats = DecodingStats()
        start = self._clock()
        generator = None
        if not sampling.greedy:
            generator = torch.Generator(device=self.device)
            if request.seed is None:
                generator.seed()
            else:
                generator.manual_seed(request.seed)
        draft_sampling = sampling if not sampling.greedy and cfg.draft_sampling == "proposal" else None

        committed = list(request.prompt_ids)
        n_prompt = len(committed)
        ids = torch.tensor(committed, dtype=torch.long, device=self.device)
        cache = DynamicCache(config=self.target.config)
        if n_prompt > 1:  # the cache holds all committed tokens but the last
            self.target(input_ids=ids[None, :-1], past_key_values=cache, use_cache=True)
            stats.target_forwards += 1
        if drafter is not None:
            drafter.reset()
        self._proxy.reset()
        self._proxy.extend(committed)
        adl = ADLState(k=cfg.k_max)
        text, emitted = "", 0
        stats.seconds["verify"] += self._clock() - start

        while True:
            room = min(request.max_new_tokens - (len(committed) - n_prompt), self.context_window - len(committed))
            k = min(cfg.draft_length or adl.k, room - 1) if drafter is not None else 0

            t0 = self._clock()
            draft_tokens, draft_probs, raw, forwards = ids[:0], None, [], 0
            if k > 0:
                draft = drafter.propose(ids, k, draft_sampling, generator)
                forwards = draft.forwards
                t1 = self._clock()
                draft_tokens, draft_probs, raw = self._choose_path(draft, committed, draft_sampling, generator)
                draft_tokens = draft_tokens[:k]
                if draft_probs is not None:
                    draft_probs = _fit_vocab(draft_probs[:k], self.vocab_size, 0.0)
                stats.seconds["draft"] += t1 - t0
                stats.seconds["path_search"] += self._clock() - t1
            d = draft_tokens.numel()

            t2 = self._clock()
            feed = torch.cat([ids[-1:], draft_tokens])[None]
            logits = self.target(input_ids=feed, past_key_values=cache, use_cache=True).logits[0]
            if sampling.greedy:
                accepted, next_token = greedy_accept(draft_tokens, logits)
            else:
                accepted, next_token = sample_accept(draft_tokens, draft_probs, sampling.probs(logits), generator)
            if d > accepted:
                cache.crop(accepted - d)
            t3 = self._clock()
            stats.seconds["verify"] += t3 - t2

            new = draft_tokens[:accepted].tolist() + [next_token]
            finish = None
            eos_at = next((i for i, t in enumerate(new) if t in self.eos_token_ids), None)
            if eos_at is not None:
                new, finish = new[: eos_at + 1], "eos"
            committed += new
            ids = torch.cat([ids, torch.tensor(new, dtype=torch.long, device=self.device)])
            self._proxy.extend(new)
            if finish is None and len(new) == room:
                finish = "length"
            if drafter is not None and cfg.draft_length is None and d > 0:
                adl = adl_update(
                    adl,
                    generated_length(raw, k, self.eos_token_ids),
                    accepted,
                    k_min=cfg.k_min,
                    k_max=cfg.k_max,
                    delta=cfg.adl_delta,
                    rho=cfg.adl_rho,
                )

            previous, text = text, self._decode_text(committed[n_prompt:])
            cut = find_stop(text, request.stops, len(previous))
            if cut != -1:
                text, finish = text[:cut], "stop"
                new = self._tokens_through(committed, n_prompt, len(committed) - len(new), cut)
            show = len(text) if finish else safe_length(text, request.stops)
            delta, emitted = text[emitted:show], max(emitted, show)

            stats.record_step(d, accepted, forwards)
            stats.new_tokens += len(new)
            now = time.perf_counter()
            stats.seconds["other"] += now - t3
            stats.wall_seconds = now - start
            yield StepEvent(delta, new, d, accepted, stats, finish)
            if finish:
                return

    def _decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _tokens_through(self, committed: list[int], n_prompt: int, step_start: int, cut: int) -> list[int]:
        """This step's tokens up to the one in which the text reaches ``cut`` characters (none when an
        earlier step's tokens already reach it: a stop string begun in an earlier block)."""
        for end in range(step_start, len(committed) + 1):
            if len(self._decode_text(committed[n_prompt:end])) >= cut:
                return committed[step_start:end]
        return committed[step_start:]
