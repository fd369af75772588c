"""``DiffuSpecLLM``: the diffuspec engine as a LlamaIndex LLM, with a step event per verification step."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from diffuspec import DiffuSpec
from diffuspec.chat import format_chat
from diffuspec.engine import context_window
from diffuspec.loading import embedded_paths, shared_engine
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
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

dispatcher = get_dispatcher(__name__)


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
    """LlamaIndex LLM on the diffuspec engine. Give an ``engine``, model paths, or nothing (embedded demo pair);
    weights load on first use."""

    target: str | None = Field(default=None, description="hub id or path of the AR target")
    drafter: str | None = Field(default=None, description="hub id or path of the diffusion drafter")
    device: str | None = Field(default=None)
    engine_config: dict[str, Any] = Field(default_factory=dict, description="DiffuSpecConfig fields")
    max_new_tokens: int = Field(default=256, gt=0)
    temperature: float = Field(default=0.0, ge=0.0)
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    model_name: str | None = None
    _engine: DiffuSpec | None = PrivateAttr(default=None)

    def __init__(self, engine: DiffuSpec | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._engine = engine

    @classmethod
    def class_name(cls) -> str:
        return "DiffuSpecLLM"

    def get_engine(self) -> DiffuSpec:
        if self._engine is None:
            self._engine = shared_engine(self.target, self.drafter, device=self.device, **self.engine_config)
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        if self._engine is not None:
            window = self._engine.context_window
        else:  # read the config only: metadata must not load weights
            from transformers import AutoConfig

            window = context_window(AutoConfig.from_pretrained(self.target or embedded_paths()["target"]))
        return LLMMetadata(
            context_window=window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
            model_name=self.model_name or self.target or "diffuspec-demo",
        )

    # ----- prompts: one formatting for streaming and non-streaming paths alike ---------------------------

    def _completion_ids(self, prompt: str, formatted: bool) -> list[int]:
        if not formatted:
            prompt = self.completion_to_prompt(prompt)
        return self.get_engine().tokenizer(prompt)["input_ids"]

    def _chat_ids(self, messages: Sequence[ChatMessage]) -> list[int]:
        dicts = [{"role": m.role.value if m.role != MessageRole.FUNCTION else "tool", "content": m.content or ""}
                 for m in messages]
        return format_chat(self.get_engine().tokenizer, dicts)

    def _call(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {
            "max_new_tokens": kwargs.get("max_new_tokens", self.max_new_tokens),
            "temperature": kwargs.get("temperature", self.temperature),
            "top_k": kwargs.get("top_k", self.top_k),
            "top_p": kwargs.get("top_p", self.top_p),
            "seed": kwargs.get("seed", self.seed),
            "stop": [*(self.stop or []), *(kwargs.get("stop") or [])] or None,
        }

    # ----- the one place events become responses ---------------------------------------------------------

    def _response(self, text: str, event, span_id: str | None) -> CompletionResponse:
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
        events = self.get_engine().stream(prompt_ids, **self._call(kwargs))
        return self._wrap(events, active_span_id.get())

    def _wrap(self, events: Iterator, span_id: str | None) -> Iterator[CompletionResponse]:
        text = ""
        for event in events:
            text += event.text
            yield self._response(text, event, span_id)

    def _aresponses(self, prompt_ids: list[int], kwargs: dict[str, Any]) -> AsyncIterator[CompletionResponse]:
        return self._awrap(self.get_engine().astream(prompt_ids, **self._call(kwargs)), active_span_id.get())

    async def _awrap(self, events: AsyncIterator, span_id: str | None) -> AsyncIterator[CompletionResponse]:
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
        response = None
        async for response in self._aresponses(self._completion_ids(prompt, formatted), kwargs):
            pass
        return response

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
        response = None
        async for response in self._aresponses(self._chat_ids(messages), kwargs):
            pass
        return self._as_chat(response)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        async def gen() -> ChatResponseAsyncGen:
            async for response in self._aresponses(self._chat_ids(messages), kwargs):
                yield self._as_chat(response)

        return gen()
