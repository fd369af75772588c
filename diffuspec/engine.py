"""DiffuSpec: the engine. It owns the models, the tokenizer and a request queue (``scheduler.py``); each call
validates its ``GenerationParams`` and queues a request which, when its turn comes, builds its own proposer
(drafter caches, n-gram proxy, length policy) and decoding state and is stepped through the one decoding loop
(``loop.py``), or a diffusion LM's own sampler in the DLM modes (``dlm/``).
"""

from __future__ import annotations

import asyncio
import numbers
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .adapters import DrafterWithTokenizer, bound_drafter_factory, drafter_factory
from .adapters.diffusion_gemma import is_diffusion_gemma
from .aio import Outbox
from .caches import check_target, new_cache
from .config import DLM_MODES, DiffuSpecConfig
from .cost_memory import costs_key, load_costs, measured_sizes, save_costs
from .dlm import DLMSettings, dlm_steps, spiffy_steps
from .drafters import Drafter, PromptLookupDrafter
from .errors import DiffuSpecError
from .events import Emitter, Generation, StepEvent
from .length import ADLPolicy, CostAwarePolicy, FixedLength, LengthPolicy, MachineCosts, RecentAcceptance
from .load_arguments import checked_load_arguments
from .loop import DecodeState
from .pairing import check_pair_model, context_window, eos_token_ids, resolve_logits_shift, resolve_mask_token, vocab_size
from .params import GenerationParams
from .path_search import CorpusNGram, NGramProxy, PathSearch
from .precision import target_precision
from .proposers import DraftProposer, LookupFirst, Proposer, TargetOnly
from .scheduler import Decoding, Request, Scheduler
from .tree import SINGLE_PATH, TreeLimits, supports_tree
from .verification import SamplingParams


class DiffuSpec:
    """Lossless speculative decoding of ``target`` with a one-pass diffusion ``drafter``.

    ``drafter`` is a masked-diffusion HF model or any ``Drafter``; ``ar_drafter`` an optional small AR model
    for ``mode="ar-drafter"``; ``cps_ngram`` an optional corpus n-gram table for CPS's causal proxy (a drafter
    directory's ``cps_ngram.safetensors``). Requests queue first come, first served (``max_waiting`` bounds the
    queue, None: unbounded) and up to ``max_running`` of them are decoded at once, a step each in turn (one by
    default: each request then runs alone, as fast as it can). Everything a request learns while it runs
    (drafter caches, n-gram proxy, length policy) is its own. What the engine keeps across requests is what it
    measured of the machine: the cost curves of the cost-aware length policy, also kept across processes
    (``cost_memory.py``): an engine starts from the curves last saved for its models, precision, device and
    thread count, and saves them after a request that measured a new size.
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
        max_running: int = 1,
        max_waiting: int | None = None,
    ) -> None:
        self.target, self.tokenizer = target, tokenizer
        self.config = config or DiffuSpecConfig()
        self._drafter_model, self._ar_drafter_model = drafter, ar_drafter
        self._mask_token_id = mask_token_id
        self.context_window = context_window(target.config)
        self.vocab_size = vocab_size(target)
        self.eos_token_ids = eos_token_ids(target, tokenizer)
        self.device = target.device
        if cps_ngram is not None and cps_ngram.vocab_size != self.vocab_size:
            raise DiffuSpecError(
                f"the CPS n-gram table counts {cps_ngram.vocab_size} tokens but the target has {self.vocab_size}: "
                "it belongs to another tokenizer. Rebuild it for this pair (`diffuspec align` writes one) or "
                "leave it out."
            )
        self._cps_ngram = cps_ngram
        self._dlm: tuple[PreTrainedModel, int, bool] | None = None
        self._drafters = self._drafter_factories()
        cfg = self.config
        # the longest draft: the configured k_max, or less where the drafter drafts at most so many per pass
        most = getattr(self._drafters["diffuspec"](), "max_draft", None) if self._drafters.get("diffuspec") else None
        self._k_max = min(cfg.k_max, most or cfg.k_max)
        self._path_search = PathSearch(
            enabled=True,
            beam_width=cfg.cps_beam_width,
            tau=cfg.cps_tau,
            max_candidates=cfg.cps_max_candidates,
            lam=cfg.cps_lambda if cfg.cps_lambda is not None else 0.5 if cps_ngram else 0.9,
        )
        self.precision = target_precision(target) or "none"  # the target's kernels (``precision.py``)
        self._costs_key = costs_key(target, drafter, self.device, ar_drafter=ar_drafter, precision=self.precision)
        self._costs = load_costs(self._costs_key) or MachineCosts.empty()
        self._recent_acceptance: dict[str, RecentAcceptance] = {}  # per drafter kind, across requests
        self._saved_sizes = measured_sizes(self._costs)
        # a target whose cache or attention cannot take a tree verifies one path (tree.py says which)
        self.token_trees = supports_tree(target, new_cache(target)) and not getattr(drafter, "hidden_layers", None)
        self._tree_limits = TreeLimits(cfg.draft_paths, cfg.tree_branches) if self.token_trees else SINGLE_PATH
        if cfg.draft_paths > 1 and getattr(drafter, "hidden_layers", ()):
            raise DiffuSpecError(
                f"draft_paths={cfg.draft_paths}: a drafter that reads the target's hidden states (e.g. DFlash) cannot "
                "verify token trees yet; use draft_paths=1 with this drafter"
            )
        self._require_mode(cfg.mode)
        self.scheduler = Scheduler(max_running, max_waiting, context=torch.inference_mode)

    @classmethod
    def from_pretrained(
        cls,
        target: str | None = None,
        drafter: str | None = None,
        *,
        ar_drafter: str | None = None,
        mask_token_id: int | None = None,
        config: DiffuSpecConfig | None = None,
        max_running: int = 1,
        max_waiting: int | None = None,
        **load: Any,
    ) -> DiffuSpec:
        """Load a pair by hub id or local path (or a preset name); with no ``target``, the default model.
        ``load`` holds the loading arguments, listed in ``load_arguments.LOAD_ARGUMENTS``: tuning, gguf_file,
        device, dtype, device_map, precision (the target's kernels on a CPU: ``precision.py``), trust_remote_code."""
        from .loading import load_models

        models = load_models(target, drafter, ar_drafter=ar_drafter, **checked_load_arguments("from_pretrained", load))
        return cls(
            models.target,
            models.drafter,
            models.tokenizer,
            config,
            ar_drafter=models.ar_drafter,
            mask_token_id=mask_token_id,
            cps_ngram=models.cps_ngram,
            max_running=max_running,
            max_waiting=max_waiting,
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
            max_running=self.scheduler.max_running,
            max_waiting=self.scheduler.max_waiting,
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

    def _check_pair_model(self, model: PreTrainedModel | DrafterWithTokenizer, role: str) -> None:
        translated = isinstance(model, DrafterWithTokenizer)  # its drafts cross over as text: any vocabulary
        check_pair_model(self.target, self.tokenizer, model.model if translated else model, role,
                         translated=translated)

    def _drafter_factories(self) -> dict[str, Callable[[], Drafter] | None]:
        """Per mode, how to make a request's drafter (None: the target alone). Model drafters are made fresh
        per request, so their caches are the request's; a ``Drafter`` object given by the caller is reused
        (and reset) for every request."""
        cfg = self.config
        check_target(self.target)
        factories: dict[str, Callable[[], Drafter] | None] = {
            "ar": None,
            "prompt-lookup": lambda: PromptLookupDrafter(max_ngram=cfg.prompt_lookup_max_ngram),
        }
        adapter = dict(tokenizer=self.tokenizer, config=cfg, mask_token_id=self._mask_token_id,
                       vocab_size=self.vocab_size, eos_token_ids=self.eos_token_ids)
        model = self._drafter_model
        if isinstance(model, Drafter):
            factories["diffuspec"] = lambda: model
        elif (bound := bound_drafter_factory(model, self.target)) is not None:
            factories["diffuspec"] = bound  # drafts with the target's own embedding, head rows and hidden states
        elif model is not None:
            self._check_pair_model(model, "drafter")
            factories["diffuspec"] = drafter_factory(model, autoregressive=False, **adapter)
            if not isinstance(model, DrafterWithTokenizer) and not is_diffusion_gemma(model):
                mask = resolve_mask_token(self.tokenizer, model, self._mask_token_id)
                shifted = resolve_logits_shift(model, cfg.logits_shift)
                self._dlm = (model, mask, shifted)  # a masked diffusion model can also be decoded on its own
                factories["dlm"] = factories["spiffy"] = None
        if self._ar_drafter_model is not None:
            self._check_pair_model(self._ar_drafter_model, "AR drafter")
            factories["ar-drafter"] = drafter_factory(self._ar_drafter_model, autoregressive=True, **adapter)
        return factories

    def _require_mode(self, mode: str) -> None:
        if mode not in self._drafters:
            needs = {"diffuspec": "a diffusion drafter (drafter=...)", "ar-drafter": "ar_drafter=...",
                     "dlm": "a diffusion model (drafter=...)", "spiffy": "a diffusion model (drafter=...)"}
            raise DiffuSpecError(f"mode {mode!r} needs {needs.get(mode, 'a known mode')}; this engine has none")

    def _prompt_ids(self, prompt: Any) -> list[int]:
        """Text (tokenized here) or token ids (used as they are), checked."""
        if isinstance(prompt, str):
            if not prompt:
                raise DiffuSpecError("the prompt is empty: give at least one character of text")
            ids = self.tokenizer(prompt)["input_ids"]
        elif hasattr(prompt, "tolist") or isinstance(prompt, Sequence) and not isinstance(prompt, (bytes, bytearray)):
            # numpy arrays and tensors through tolist(): their bools and floats then fail the check below
            ids = prompt.tolist() if hasattr(prompt, "tolist") else list(prompt)
            if not isinstance(ids, list):
                raise DiffuSpecError(
                    f"the prompt is a single number ({ids!r}), not a sequence: pass a flat list of token ids"
                )
            bad = next((t for t in ids if not _is_token_id(t)), None)
            if bad is not None:
                raise DiffuSpecError(
                    f"a token-id prompt must hold integers only, got {bad!r} ({type(bad).__name__}): pass a flat "
                    "list of ints, or the prompt as text"
                )
            ids = [int(t) for t in ids]
        else:
            raise DiffuSpecError(
                f"the prompt must be text or a flat list of token ids, got {type(prompt).__name__}"
            )
        if not ids:
            raise DiffuSpecError("the prompt is empty: give at least one token")
        out_of_range = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if out_of_range is not None:
            raise DiffuSpecError(
                f"token id {out_of_range} is outside the target's vocabulary (0..{self.vocab_size - 1}): "
                "tokenize the prompt with this engine's tokenizer"
            )
        if len(ids) >= self.context_window:
            raise DiffuSpecError(
                f"the prompt has {len(ids)} tokens but the target's context window is "
                f"{self.context_window}: shorten the prompt to at most {self.context_window - 1} tokens"
            )
        return ids

    def _params(self, max_new_tokens: int | None, params: GenerationParams | None, kwargs: dict) -> GenerationParams:
        if params is not None and not isinstance(params, GenerationParams):
            raise DiffuSpecError(
                f"params must be a GenerationParams, got {type(params).__name__}: pass GenerationParams(...) or "
                "the fields as keyword arguments"
            )
        if max_new_tokens is not None:
            kwargs = {"max_new_tokens": max_new_tokens, **kwargs}
        p = GenerationParams.of(params, **kwargs)
        self._require_mode(p.mode or self.config.mode)
        return p

    # ----- generation ----------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int | None = None,
        *,
        params: GenerationParams | None = None,
        **kwargs: Any,
    ) -> Generation:
        """Generate a continuation of ``prompt`` (text, or token ids used as they are). Keyword arguments are
        ``GenerationParams`` fields (max_new_tokens, temperature, top_k, top_p, stop, seed, mode), applied over
        ``params`` when both are given."""
        return Generation.collect(self.stream(prompt, max_new_tokens, params=params, **kwargs))

    def stream(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int | None = None,
        *,
        params: GenerationParams | None = None,
        **kwargs: Any,
    ) -> Iterator[StepEvent]:
        """Like ``generate``, one ``StepEvent`` per step. Arguments are checked now, the request is queued at
        the first ``next()``; closing the iterator early withdraws it (before its next step, or before it
        starts if it is still waiting)."""
        ids, p = self._checked(prompt, max_new_tokens, params, kwargs)
        return self._stream(self._request(ids, p, None))

    def astream(
        self, prompt: str | Sequence[int], *, params: GenerationParams | None = None, **kwargs: Any
    ) -> AsyncIterator[StepEvent]:
        """``stream`` for async code: the request is decoded by the engine's worker thread while the event
        loop keeps running (no thread waits for it), and leaving the ``async for`` early (or cancelling)
        withdraws it. Arguments are checked at the call, as for ``stream``."""
        ids, p = self._checked(prompt, None, params, kwargs)
        return self._astream(ids, p)

    async def agenerate(
        self, prompt: str | Sequence[int], *, params: GenerationParams | None = None, **kwargs: Any
    ) -> Generation:
        """``generate`` for async code (see ``astream``)."""
        return Generation.collect([event async for event in self.astream(prompt, params=params, **kwargs)])

    def submit(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int | None = None,
        *,
        params: GenerationParams | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        **kwargs: Any,
    ) -> Request:
        """Queue a generation now and return its handle: read its events with ``request.events()`` in a
        thread, or ``async for`` in ``loop`` (give the running loop for async code); ``request.cancel()``
        withdraws it. Raises ``EngineOverloaded`` at once when the queue is full (``max_waiting``)."""
        request = self._request(*self._checked(prompt, max_new_tokens, params, kwargs), loop)
        self.scheduler.submit(request)
        return request

    def _checked(self, prompt: Any, max_new_tokens: int | None, params: GenerationParams | None,
                 kwargs: dict) -> tuple[list[int], GenerationParams]:
        p = self._params(max_new_tokens, params, kwargs)
        return self._prompt_ids(prompt), p

    def _request(self, prompt_ids: list[int], params: GenerationParams,
                 loop: asyncio.AbstractEventLoop | None) -> Request:
        return Request(partial(self._start, prompt_ids, params), Outbox(loop), prompt_ids)

    def _stream(self, request: Request) -> Iterator[StepEvent]:
        self.scheduler.submit(request)
        yield from request.events()  # closing this generator closes that one, which withdraws the request

    async def _astream(self, prompt_ids: list[int], params: GenerationParams) -> AsyncIterator[StepEvent]:
        request = self._request(prompt_ids, params, asyncio.get_running_loop())
        self.scheduler.submit(request)
        try:
            async for event in request:
                yield event
        finally:
            request.cancel()

    def _start(self, prompt_ids: list[int], params: GenerationParams) -> Decoding:
        """A request's decoding, built when its turn comes (in the scheduler's worker)."""
        sampling = SamplingParams(params.temperature, params.top_k, params.top_p)
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        mode = params.mode or self.config.mode
        if mode in DLM_MODES:
            return _EventsDecoding(self._dlm_decode(mode, prompt_ids, params, sampling, generator))
        emitter = Emitter(self.tokenizer, params.stop, self.eos_token_ids, prompt_length=len(prompt_ids),
                          max_new_tokens=params.max_new_tokens, context_window=self.context_window)
        proposer = self._proposer(mode, prompt_ids, sampling, generator)
        calibrate = self._k_max + 1 if self._uses_cost_policy(mode) else 0
        state = DecodeState.start(self.target, prompt_ids, proposer, emitter, sampling, seed, generator, self._costs,
                                  time.perf_counter, calibrate)
        return _SavingCosts(state, self._remember_costs)

    def _remember_costs(self) -> None:
        """Save the cost curves when the request just closed measured a size they did not have."""
        sizes = measured_sizes(self._costs)
        if sizes != self._saved_sizes:
            self._saved_sizes = sizes
            save_costs(self._costs_key, self._costs)

    def _dlm_decode(self, mode: str, prompt_ids: list[int], params: GenerationParams, sampling: SamplingParams,
                    generator: torch.Generator) -> Iterator[StepEvent]:
        """The diffusion model as the model decoded: one event per forward pass, whose draft length is the
        number of Spiffy draft states evaluated and whose "accepted" count the extra denoising steps they saved."""
        model, mask, shifted = self._dlm
        emitter = Emitter(self.tokenizer, params.stop, self.eos_token_ids, prompt_length=len(prompt_ids),
                          max_new_tokens=params.max_new_tokens, context_window=context_window(model.config))
        run = spiffy_steps if mode == "spiffy" else dlm_steps
        steps = run(model, mask, prompt_ids, emitter.room, shifted=shifted, sampling=sampling, generator=generator,
                    eos_token_ids=self.eos_token_ids, settings=self.config.dlm or DLMSettings())
        try:
            last = time.perf_counter()
            for step in steps:
                tokens, finish = emitter.commit(step.tokens)
                emitter.stats.step(step.graph_size, step.denoising_steps - 1, len(tokens), target_forwards=step.forwards,
                                   denoising_steps=step.denoising_steps)
                now = time.perf_counter()
                emitter.stats.seconds["verify"] += now - last
                last = now
                yield emitter.event(tokens, step.graph_size, step.denoising_steps - 1, finish)
                if finish:
                    return
        finally:
            steps.close()

    def _uses_cost_policy(self, mode: str) -> bool:
        return self._drafters[mode] is not None and self.config.draft_length is None and self.config.length_policy == "cost"

    def _length_policy(self, mode: str, sampling: SamplingParams) -> LengthPolicy:
        cfg = self.config
        search = cfg.cps and mode == "diffuspec"
        tree_limits = self._tree_limits if mode == "diffuspec" else SINGLE_PATH
        if cfg.draft_length is not None:
            return FixedLength(cfg.draft_length, search, tree_limits)
        if cfg.length_policy == "adl":
            return ADLPolicy(k_min=cfg.k_min, k_max=self._k_max, delta=cfg.adl_delta, rho=cfg.adl_rho, search=search,
                             tree_limits=tree_limits)
        recent = self._recent_acceptance.setdefault(mode, RecentAcceptance(self._k_max))
        return CostAwarePolicy(self._costs, mode, k_min=cfg.k_min, k_max=self._k_max, search=search, recent=recent,
                               adaptive_search=sampling.greedy, tree_limits=tree_limits)

    def _proposer(self, mode: str, prompt_ids: list[int], sampling: SamplingParams,
                  generator: torch.Generator | None) -> Proposer:
        make_drafter = self._drafters[mode]
        if make_drafter is None:
            return TargetOnly()
        cfg = self.config
        proposal_sampling = sampling if not sampling.greedy and cfg.draft_sampling == "proposal" else None

        def proposer(kind: str, drafter: Drafter, draft_sampling: SamplingParams | None) -> DraftProposer:
            return DraftProposer(
                drafter, self._length_policy(kind, sampling), self._path_search,
                NGramProxy(self.vocab_size, cfg.ngram_order, self._cps_ngram, cfg.cps_corpus_weight),
                vocab_size=self.vocab_size, eos_token_ids=self.eos_token_ids, prompt_ids=prompt_ids,
                draft_sampling=draft_sampling, generator=generator,
            )

        drafting = proposer(mode, make_drafter(), proposal_sampling)
        if mode == "diffuspec" and cfg.prompt_lookup_first:
            return LookupFirst(proposer("prompt-lookup", self._drafters["prompt-lookup"](), None), drafting)
        return drafting


class _SavingCosts:
    """A request's ``DecodeState`` that, at its last step (before that event is delivered) or when withdrawn, has
    the engine remember what it measured."""

    def __init__(self, state: DecodeState, remember: Callable[[], None]) -> None:
        self._state, self._remember = state, remember

    def step(self) -> StepEvent:
        event = self._state.step()
        if event.finish_reason is not None:
            self._remember()
        return event

    def close(self) -> None:
        self._state.close()
        self._remember()


class _EventsDecoding:
    """A generator of events (a diffusion model's own sampler) as a ``Decoding``."""

    def __init__(self, events: Iterator[StepEvent]) -> None:
        self._events = events

    def step(self) -> StepEvent:
        return next(self._events)

    def close(self) -> None:
        self._events.close()


def _is_token_id(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
