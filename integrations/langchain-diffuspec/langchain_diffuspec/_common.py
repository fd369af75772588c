"""What both LangChain classes share: the engine and generation fields, their checks, lazy loading, token
counting, and the per-step figures and callback events."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager
from langchain_core.runnables import RunnableConfig, ensure_config
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, SecretStr
from pydantic.functional_validators import PlainValidator

from diffuspec.integration import call_params, check_model_arguments, display_name, engine_arguments
from diffuspec.params import GenerationParams

if TYPE_CHECKING:
    from diffuspec import DecodingStats, DiffuSpec, StepEvent

STEP_EVENT = "diffuspec_step"  # custom callback event fired once per verification step

# Generation fields are checked by GenerationParams alone: pydantic would otherwise coerce "0.9" into a number
# and True into a count before it could refuse them.
Unchecked = PlainValidator(lambda value: value)


class EngineFields(BaseModel):
    """Construct with an existing ``engine``, with model paths (``target`` or ``model_id``, ``drafter``,
    ``ar_drafter``) and how to load them (``device``, ``dtype``, ``device_map``, ``trust_remote_code``, or the
    same in ``model_kwargs``), or with nothing for the embedded demo pair. Weights load on first use, once per
    distinct configuration. Unknown arguments are refused, in the constructor and per call."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, protected_namespaces=(),
                              extra="forbid")

    engine: Any = Field(default=None, exclude=True)  # a DiffuSpec (typed Any: no torch import to define us)
    target: str | None = Field(default=None, validation_alias=AliasChoices("target", "model_id"))
    drafter: str | None = None
    ar_drafter: str | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)  # from_pretrained's loading arguments
    device: str | None = None
    dtype: Any = None  # "bfloat16", "auto", a torch.dtype
    device_map: str | dict[str, Any] | None = None
    trust_remote_code: bool | None = None
    engine_config: dict[str, Any] = Field(default_factory=dict)  # DiffuSpecConfig fields
    model_name: str | None = Field(default=None, alias="model")  # a display name (needs target or engine)
    max_tokens: Annotated[int, Unchecked] = Field(default=256, validation_alias=AliasChoices("max_tokens",
                                                                                             "max_new_tokens"))
    temperature: Annotated[float, Unchecked] = 0.0
    top_k: Annotated[int | None, Unchecked] = None
    top_p: Annotated[float | None, Unchecked] = None
    seed: Annotated[int | None, Unchecked] = None
    stop: Annotated[list[str] | None, Unchecked] = Field(default=None, alias="stop_sequences")
    mode: Annotated[str | None, Unchecked] = None  # None: the engine's configured mode
    # Accepted for compatibility with hosted models (and langchain-tests); a local engine neither times out,
    # retries, authenticates nor needs telling to stream (it always streams internally).
    timeout: float | None = None
    max_retries: int | None = None
    api_key: SecretStr | None = None
    streaming: bool = False
    _loaded: Any = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        check_model_arguments(type(self), data)
        super().__init__(**data)
        self.generation_params()  # bad values fail here, not at the first call
        self.engine_arguments()

    def engine_arguments(self) -> dict[str, Any]:
        return engine_arguments(
            engine=self.engine, target=self.target, drafter=self.drafter, ar_drafter=self.ar_drafter,
            model_name=self.model_name, model_kwargs=self.model_kwargs, config=self.engine_config,
            device=self.device, dtype=self.dtype, device_map=self.device_map, trust_remote_code=self.trust_remote_code,
        )

    def get_engine(self) -> DiffuSpec:
        if self.engine is not None:
            return self.engine
        if self._loaded is None:
            from diffuspec.loading import shared_engine

            self._loaded = shared_engine(**self.engine_arguments())
        return self._loaded

    @property
    def resolved_model_name(self) -> str:
        return display_name(self.model_name, self.target, self.engine)

    def generation_params(self, stop: list[str] | None = None, **overrides: Any) -> GenerationParams:
        """The constructor's generation fields, overridden per call (unknown names refused); stop strings of
        both apply."""
        base = GenerationParams(
            max_new_tokens=self.max_tokens, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
            stop=self.stop, seed=self.seed, mode=self.mode,
        )
        return call_params(type(self).__name__, base, overrides, stop)

    def identity(self) -> dict[str, Any]:
        """Every constructor argument that changes the output: LangChain's cache key is built from it."""
        if self.engine is not None:  # an object, not a path: identified as one (never shared across processes)
            source = {"engine": f"{type(self.engine).__name__}@{id(self.engine):x}"}
        else:
            source = self.engine_arguments()
            source["config"] = asdict(source["config"])
        params = self.generation_params().as_dict()
        params["default_stop"] = params.pop("stop")  # LangChain puts the call's stop list under "stop"
        return {"model_name": self.resolved_model_name, **source, **params}

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids from the engine's own tokenizer (LangChain's default would fetch GPT-2's from the hub)."""
        if getattr(self, "custom_get_token_ids", None) is not None:
            return self.custom_get_token_ids(text)
        return self.get_engine().tokenizer.encode(text, add_special_tokens=False)


def step_info(accepted: int, draft_length: int) -> dict[str, list[int]]:
    """Per-step figures as one-element lists, which LangChain concatenates when it adds chunks."""
    return {"accepted_tokens": [accepted], "draft_lengths": [draft_length]}


def final_info(stats: DecodingStats, finish_reason: str, model_name: str) -> dict[str, Any]:
    """Aggregates, sent once on the last chunk (floats must not meet another float when chunks merge)."""
    return {
        "finish_reason": finish_reason,
        "model_name": model_name,
        "mean_accepted_tokens": stats.mean_accepted_tokens,
        "acceptance_rate": stats.acceptance_rate,
        "tokens_per_step": stats.tokens_per_step,
        "tokens_per_second": stats.tokens_per_second,
        "verification_steps": stats.steps,
    }


def usage(prompt_tokens: int, stats: DecodingStats) -> dict[str, int]:
    return {
        "input_tokens": prompt_tokens,
        "output_tokens": stats.new_tokens,
        "total_tokens": prompt_tokens + stats.new_tokens,
    }


class StepEvents:
    """Fires the ``diffuspec_step`` custom callback event of one run, once per verification step (visible in
    ``astream_events`` as ``on_custom_event``). A callback manager of its own, because
    ``dispatch_custom_event`` raises when a model is called directly (no parent run)."""

    def __init__(self, manager: CallbackManager | AsyncCallbackManager, run_id: uuid.UUID) -> None:
        self.manager, self.run_id = manager, run_id

    def __repr__(self) -> str:  # constant: it can sit in call kwargs that LangChain turns into cache keys
        return "StepEvents"

    @classmethod
    def of_run(cls, run_manager: Any, manager_class: type) -> StepEvents:
        """For a run LangChain has started (a run manager)."""
        manager = manager_class(
            handlers=run_manager.handlers, inheritable_handlers=run_manager.inheritable_handlers,
            parent_run_id=run_manager.parent_run_id, tags=run_manager.tags, metadata=run_manager.metadata,
        )
        return cls(manager, run_manager.run_id)

    @classmethod
    def of_config(cls, model: Any, config: RunnableConfig | None, manager_class: type) -> tuple[RunnableConfig, StepEvents]:
        """For a run LangChain is about to start from ``config``: its run id is fixed here, and the manager
        gets the handlers LangChain will configure for it."""
        config = ensure_config(config)
        config = {**config, "run_id": config.get("run_id") or uuid.uuid4()}
        manager = manager_class.configure(
            config.get("callbacks"), model.callbacks, model.verbose, config.get("tags"), model.tags,
            config.get("metadata"), model.metadata,
        )
        return config, cls(manager, config["run_id"])

    @staticmethod
    def payload(event: StepEvent) -> dict[str, Any]:
        return {
            "accepted_tokens": event.accepted,
            "draft_length": event.draft_length,
            "new_tokens": len(event.token_ids),
            "mean_accepted_tokens": event.stats.mean_accepted_tokens,
            "steps": event.stats.steps,
        }

    def fire(self, event: StepEvent) -> None:
        self.manager.on_custom_event(STEP_EVENT, self.payload(event), run_id=self.run_id)

    async def afire(self, event: StepEvent) -> None:
        await self.manager.on_custom_event(STEP_EVENT, self.payload(event), run_id=self.run_id)
