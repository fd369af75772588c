"""``DiffuSpecLLM``: the diffuspec engine as a LlamaIndex LLM, with a step event per verification step."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from pydantic import AliasChoices
from pydantic.functional_validators import PlainValidator

from diffuspec.chat import format_chat
from diffuspec.integration import call_params, check_model_arguments, display_name, engine_arguments
from diffuspec.params import GenerationParams

if TYPE_CHECKING:
    from diffuspec import DiffuSpec, StepEvent

dispatcher = get_dispatcher(__name__)
MAX_NEW_TOKENS = 256  # the default answer length, at most a quarter of the context window
# Generation fields are checked by GenerationParams alone: pydantic would otherwise coerce "0.9" into a number
# and True into a count before it could refuse them.
Unchecked = PlainValidator(lambda value: value)


class DiffuSpecStepEvent(BaseEvent):
    """One speculative verification step."""

    accepted_tokens: int
    draft_length: int
    new_tokens: int
    mean_accepted_tokens: float  # running MAT of this generation
    finish_reason: str | None = None

    @classmethod
    def class_name(cls) -> str:
        return "DiffuSpecStepEvent"


class DiffuSpecLLM(CustomLLM):
    """LlamaIndex LLM on the diffuspec engine. Give an ``engine``, model paths (``target`` or ``model_id``,
    ``drafter``, ``ar_drafter``) and how to load them (``device``, ``dtype``, ``device_map``,
    ``trust_remote_code``, or the same in ``model_kwargs``), or nothing (the embedded demo pair); weights load on
    first use. Unknown arguments are refused, in the constructor and per call."""

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=(), extra="forbid")

    target: str | None = Field(default=None, validation_alias=AliasChoices("target", "model_id"),
                               description="hub id or path of the AR target")
    drafter: str | None = Field(default=None, description="hub id or path of the diffusion drafter")
    ar_drafter: str | None = Field(default=None, description="hub id or path of an AR drafter (mode 'ar-drafter')")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="from_pretrained's loading arguments")
    device: str | None = None
    dtype: Any = Field(default=None, description='"bfloat16", "auto" or a torch.dtype')
    device_map: str | dict[str, Any] | None = None
    trust_remote_code: bool | None = None
    engine_config: dict[str, Any] = Field(default_factory=dict, description="DiffuSpecConfig fields")
    model_name: str | None = Field(default=None, description="display name (needs target or engine)")
    max_new_tokens: Annotated[int | None, Unchecked] = Field(
        default=None, description=f"None: a quarter of the context window, at most {MAX_NEW_TOKENS}"
    )
    temperature: Annotated[float, Unchecked] = 0.0
    top_k: Annotated[int | None, Unchecked] = None
    top_p: Annotated[float | None, Unchecked] = None
    seed: Annotated[int | None, Unchecked] = None
    stop: Annotated[list[str] | None, Unchecked] = None
    mode: Annotated[str | None, Unchecked] = Field(default=None, description="None: the engine's configured mode")
    context_window: int | None = Field(default=None, gt=0, description="None: the model's own")
    num_output: int | None = Field(default=None, gt=0, description="tokens LlamaIndex reserves for the answer; "
                                                                   "None: max_new_tokens")
    is_chat_model: bool | None = Field(default=None, description="None: whether the tokenizer has a chat template")
    _engine: Any = PrivateAttr(default=None)  # the engine given to the constructor
    _loaded: Any = PrivateAttr(default=None)  # else the shared one, once loaded
    _model_facts: tuple[int, bool] | None = PrivateAttr(default=None)  # (context window, has a chat template)

    def __init__(self, engine: DiffuSpec | None = None, **kwargs: Any) -> None:
        check_model_arguments(type(self), kwargs, extra=["engine"])
        super().__init__(**kwargs)
        self._engine = engine
        # Bad values fail here, not at the first call (a derived max_new_tokens is valid by construction).
        self._base_params(max_new_tokens=1 if self.max_new_tokens is None else self.max_new_tokens)
        self._engine_arguments()

    @classmethod
    def class_name(cls) -> str:
        return "DiffuSpecLLM"

    def _engine_arguments(self) -> dict[str, Any]:
        return engine_arguments(
            engine=self._engine, target=self.target, drafter=self.drafter,
            ar_drafter=self.ar_drafter, model_name=self.model_name, model_kwargs=self.model_kwargs,
            config=self.engine_config, device=self.device, dtype=self.dtype, device_map=self.device_map,
            trust_remote_code=self.trust_remote_code,
        )

    def get_engine(self) -> DiffuSpec:
        if self._engine is not None:
            return self._engine
        if self._loaded is None:
            from diffuspec.loading import shared_engine

            self._loaded = shared_engine(**self._engine_arguments())
        return self._loaded

    # ----- sizes: what LlamaIndex packs prompts with ----------------------------------------------------

    def _facts(self) -> tuple[int, bool]:
        """The model's context window and whether its tokenizer has a chat template: from the engine once
        loaded, else from the config and tokenizer files (metadata must not load weights)."""
        engine = self._engine or self._loaded
        if engine is not None:
            return engine.context_window, bool(getattr(engine.tokenizer, "chat_template", None))
        if self._model_facts is None:
            from transformers import AutoConfig, AutoTokenizer

            from diffuspec.engine import context_window
            from diffuspec.loading import target_directory

            path = target_directory(self.target)
            remote_code = self._engine_arguments().get("trust_remote_code", False)
            config = AutoConfig.from_pretrained(path, trust_remote_code=remote_code)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote_code)
            self._model_facts = context_window(config), bool(tokenizer.chat_template)
        return self._model_facts

    def _window(self) -> int:
        return self.context_window if self.context_window is not None else self._facts()[0]

    def _max_new_tokens(self) -> int:
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return min(MAX_NEW_TOKENS, self._window() // 4)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self._window(),
            num_output=self.num_output or self._max_new_tokens(),
            is_chat_model=self.is_chat_model if self.is_chat_model is not None else self._facts()[1],
            is_function_calling_model=False,
            model_name=display_name(self.model_name, self.target, self._engine),
        )

    @property
    def tokenizer(self) -> Callable[[str], list[int]]:
        """The engine's tokenizer as a token counter, for ``Settings.tokenizer = llm.tokenizer``: LlamaIndex
        then packs prompts by the tokens this model sees (its default, tiktoken, counts other tokens). Loads
        the engine."""
        return partial(self.get_engine().tokenizer.encode, add_special_tokens=False)

    # ----- prompts: one formatting for streaming and non-streaming paths alike ---------------------------

    def _completion_ids(self, prompt: str, formatted: bool) -> list[int]:
        if not formatted:
            prompt = self.completion_to_prompt(prompt)
        return self.get_engine().tokenizer(prompt)["input_ids"]

    def _chat_ids(self, messages: Sequence[ChatMessage]) -> list[int]:
        dicts = [{"role": m.role.value, "content": m.content or ""} for m in messages]
        return format_chat(self.get_engine().tokenizer, dicts)

    def _base_params(self, **changes: Any) -> GenerationParams:
        fields = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_k": self.top_k,
                  "top_p": self.top_p, "stop": self.stop, "seed": self.seed, "mode": self.mode}
        return GenerationParams(**{**fields, **changes})

    def _params(self, kwargs: dict[str, Any]) -> GenerationParams:
        return call_params(type(self).__name__, self._base_params(max_new_tokens=self._max_new_tokens()), kwargs)

    # ----- the one place events become responses ---------------------------------------------------------

    def _response(self, text: str, event: StepEvent, span_id: str | None) -> CompletionResponse:
        dispatcher.event(
            DiffuSpecStepEvent(
                accepted_tokens=event.accepted, draft_length=event.draft_length, new_tokens=len(event.token_ids),
                mean_accepted_tokens=event.stats.mean_accepted_tokens, finish_reason=event.finish_reason,
                span_id=span_id,
            )
        )
        extra: dict[str, Any] = {"accepted_tokens": event.accepted, "draft_length": event.draft_length}
        if event.finish_reason is not None:
            extra.update(finish_reason=event.finish_reason, stats=event.stats.summary())
        return CompletionResponse(text=text, delta=event.text, additional_kwargs=extra)

    def _responses(self, prompt_ids: list[int], kwargs: dict[str, Any]) -> Iterator[CompletionResponse]:
        # Runs in the caller's body: arguments are checked now and the span id is the caller's (a lazy
        # generator would run after the span had closed).
        events = self.get_engine().stream(prompt_ids, params=self._params(kwargs))
        return self._wrap(events, active_span_id.get())

    def _wrap(self, events: Iterator[StepEvent], span_id: str | None) -> Iterator[CompletionResponse]:
        text = ""
        for event in events:
            text += event.text
            yield self._response(text, event, span_id)

    def _aresponses(self, prompt_ids: list[int], kwargs: dict[str, Any]) -> AsyncIterator[CompletionResponse]:
        # As _responses: called in the caller's body.
        events = self.get_engine().astream(prompt_ids, params=self._params(kwargs))
        return self._awrap(events, active_span_id.get())

    async def _awrap(self, events: AsyncIterator[StepEvent], span_id: str | None) -> AsyncIterator[CompletionResponse]:
        text = ""
        async for event in events:
            text += event.text
            yield self._response(text, event, span_id)

    @staticmethod
    def _last(responses: Iterator[CompletionResponse]) -> CompletionResponse:
        response = None
        for response in responses:
            pass
        return response

    @staticmethod
    async def _alast(responses: AsyncIterator[CompletionResponse]) -> CompletionResponse:
        response = None
        async for response in responses:
            pass
        return response

    @staticmethod
    def _as_chat(response: CompletionResponse) -> ChatResponse:
        message = ChatMessage(role=MessageRole.ASSISTANT, content=response.text,
                              additional_kwargs=response.additional_kwargs)
        return ChatResponse(message=message, delta=response.delta, additional_kwargs=response.additional_kwargs)

    # ----- completion --------------------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._last(self._responses(self._completion_ids(prompt, formatted), kwargs))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._responses(self._completion_ids(prompt, formatted), kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await self._alast(self._aresponses(self._completion_ids(prompt, formatted), kwargs))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        return self._aresponses(self._completion_ids(prompt, formatted), kwargs)

    # ----- chat, through the tokenizer's chat template ----------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._as_chat(self._last(self._responses(self._chat_ids(messages), kwargs)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return (self._as_chat(r) for r in self._responses(self._chat_ids(messages), kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._as_chat(await self._alast(self._aresponses(self._chat_ids(messages), kwargs)))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        responses = self._aresponses(self._chat_ids(messages), kwargs)  # here, inside the span (see _responses)

        async def as_chat() -> ChatResponseAsyncGen:
            async for response in responses:
                yield self._as_chat(response)

        return as_chat()
