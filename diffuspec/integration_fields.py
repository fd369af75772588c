"""The fields every framework wrapper takes (LangChain's chat model and LLM, LlamaIndex's LLM), as one pydantic
block: which engine (an ``engine``, or model paths and how to load them), generation defaults, and the methods
that turn them into a ``shared_engine`` and ``GenerationParams``. Imported by the integrations only (it needs
pydantic, which they bring); building a wrapper loads nothing."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AliasChoices, ConfigDict, Field, PrivateAttr, create_model
from pydantic.functional_validators import PlainValidator

from .integration import (ANSWER_TOKENS, call_params, check_model_arguments, default_answer_tokens, display_name,
                          engine_arguments)
from .load_arguments import LOAD_ARGUMENTS
from .params import GenerationParams

if TYPE_CHECKING:
    from .engine import DiffuSpec

# Generation fields are checked by GenerationParams alone: pydantic would otherwise coerce "0.9" into a number
# and True into a count before it could refuse them.
Unchecked = PlainValidator(lambda value: value)


_LoadFields = create_model(  # one field per loading argument (None: not given)
    "_LoadFields",
    __config__=ConfigDict(arbitrary_types_allowed=True),
    **{a.name: (a.annotation, Field(default=None, description=a.help)) for a in LOAD_ARGUMENTS},
)


class EngineFields(_LoadFields):
    """Construct with an existing ``engine``, with model paths (``target`` or ``model_id``, ``drafter``,
    ``ar_drafter``) and how to load them (the loading arguments, or the same in ``model_kwargs``), or with
    nothing for the default model. Weights load on first use, once per distinct configuration. Unknown
    arguments are refused, in the constructor and per call."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, protected_namespaces=(),
                              extra="forbid")

    engine: Any = Field(default=None, exclude=True)  # a DiffuSpec (typed Any: no torch import to define us)
    target: str | None = Field(default=None, validation_alias=AliasChoices("target", "model_id"),
                               description="hub id or path of the AR target, or a preset name")
    drafter: str | None = Field(default=None, description="hub id or path of the diffusion drafter")
    ar_drafter: str | None = Field(default=None, description="hub id or path of an AR drafter (mode 'ar-drafter')")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="the loading arguments, as a dict")
    engine_config: dict[str, Any] = Field(default_factory=dict, description="DiffuSpecConfig fields")
    model_name: str | None = Field(default=None, alias="model", description="display name (needs target or engine)")
    max_new_tokens: Annotated[int | None, Unchecked] = Field(
        default=None, validation_alias=AliasChoices("max_new_tokens", "max_tokens"),
        description=f"answer length; None: a quarter of the context window, at most {ANSWER_TOKENS}",
    )
    temperature: Annotated[float, Unchecked] = 0.0
    top_k: Annotated[int | None, Unchecked] = None
    top_p: Annotated[float | None, Unchecked] = None
    seed: Annotated[int | None, Unchecked] = None
    stop: Annotated[list[str] | None, Unchecked] = Field(default=None, validation_alias=AliasChoices("stop",
                                                                                                   "stop_sequences"))
    mode: Annotated[str | None, Unchecked] = Field(default=None, description="None: the engine's configured mode")
    _loaded: Any = PrivateAttr(default=None)  # the shared engine, once loaded
    _model_facts: tuple[int, bool] | None = PrivateAttr(default=None)  # (context window, has a chat template)

    def __init__(self, **data: Any) -> None:
        check_model_arguments(type(self), data)
        super().__init__(**data)
        # bad values fail here, not at the first call (without loading anything to size the answer)
        self.generation_params(max_new_tokens=1 if self.max_new_tokens is None else self.max_new_tokens)
        self.engine_arguments()

    # ----- the engine --------------------------------------------------------------------------------------

    def engine_arguments(self) -> dict[str, Any]:
        """``shared_engine``'s keyword arguments (empty with an ``engine``), checked."""
        load = {a.name: getattr(self, a.name) for a in LOAD_ARGUMENTS}
        return engine_arguments(
            engine=self.engine, target=self.target, drafter=self.drafter, ar_drafter=self.ar_drafter,
            model_name=self.model_name, model_kwargs=self.model_kwargs, config=self.engine_config, **load,
        )

    def get_engine(self) -> DiffuSpec:
        if self.engine is not None:
            return self.engine
        if self._loaded is None:
            from .registry import shared_engine

            self._loaded = shared_engine(**self.engine_arguments())
        return self._loaded

    @property
    def resolved_model_name(self) -> str:
        return display_name(self.model_name, self.target, self.engine)

    def model_facts(self) -> tuple[int, bool]:
        """The model's context window and whether its tokenizer has a chat template: from the engine once
        loaded, else from the config and tokenizer files (sizes must not load weights)."""
        engine = self.engine or self._loaded
        if engine is not None:
            return engine.context_window, bool(getattr(engine.tokenizer, "chat_template", None))
        if self._model_facts is None:
            from transformers import AutoConfig, AutoTokenizer

            from .loading import target_directory
            from .pairing import context_window

            path = target_directory(self.target)
            remote_code = self.engine_arguments().get("trust_remote_code") or False
            config = AutoConfig.from_pretrained(path, trust_remote_code=remote_code)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote_code)
            self._model_facts = context_window(config), bool(tokenizer.chat_template)
        return self._model_facts

    # ----- generation ----------------------------------------------------------------------------------------

    def answer_tokens(self) -> int:
        """The answer length when a call gives none."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return default_answer_tokens(self.model_facts()[0])

    def generation_params(self, stop: list[str] | None = None, **overrides: Any) -> GenerationParams:
        """The constructor's generation fields, overridden per call (unknown names refused); stop strings of
        both apply. An answer length from neither comes from ``answer_tokens()`` (which reads the window)."""
        sized = "max_new_tokens" in overrides or "max_tokens" in overrides
        base = GenerationParams(max_new_tokens=1 if sized else self.answer_tokens(), temperature=self.temperature,
                                top_k=self.top_k, top_p=self.top_p, stop=self.stop, seed=self.seed, mode=self.mode)
        return call_params(type(self).__name__, base, overrides, stop)

    def identity(self) -> dict[str, Any]:
        """Every constructor argument that changes the output (LangChain's cache key is built from it)."""
        if self.engine is not None:  # an object, not a path: identified as one (never shared across processes)
            source = {"engine": f"{type(self.engine).__name__}@{id(self.engine):x}"}
        else:
            source = self.engine_arguments()
            source["config"] = asdict(source["config"])
        base = GenerationParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, stop=self.stop,
                                seed=self.seed, mode=self.mode).as_dict()
        base["max_new_tokens"] = self.max_new_tokens  # None: the model's default, the same for the same model
        base["default_stop"] = base.pop("stop")  # LangChain puts the call's stop list under "stop"
        return {"model_name": self.resolved_model_name, **source, **base}
