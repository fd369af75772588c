"""``DiffuSpecLLM``: the diffuspec engine as a LlamaIndex LLM, with a step event per verification step."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

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
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from diffuspec.chat import format_chat
from diffuspec.integration import default_answer_tokens
from diffuspec.integration_fields import EngineFields

if TYPE_CHECKING:
    from diffuspec import StepEvent

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


class DiffuSpecLLM(EngineFields, CustomLLM):
    """LlamaIndex LLM on the diffuspec engine. Give an ``engine``, model paths (``target`` or ``model_id``,
    ``drafter``, ``ar_drafter``) and how to load them (``device``, ``dtype``, ``device_map``,
    ``trust_remote_code``, or the same in ``model_kwargs``), or nothing (the default model); weights load on
    first use. Unknown arguments are refused, in the constructor and per call."""

    context_window: int | None = Field(default=None, gt=0, description="None: the model's own")
    num_output: int | None = Field(default=None, gt=0, description="tokens LlamaIndex reserves for the answer; "
                                                                   "None: the answer length")
    is_chat_model: bool | None = Field(default=None, description="None: whether the tokenizer has a chat template")

    @classmethod
    def class_name(cls) -> str:
        return "DiffuSpecLLM"

    # ----- sizes: what LlamaIndex packs prompts with ----------------------------------------------------

    def _window(self) -> int:
        return self.context_window if self.context_window is not None else self.model_facts()[0]

    def answer_tokens(self) -> int:  # the default answer length follows this wrapper's window
        return self.max_new_tokens if self.max_new_tokens is not None else default_answer_tokens(self._window())

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self._window(),
            num_output=self.num_output or self.answer_tokens(),
            is_chat_model=self.is_chat_model if self.is_chat_model is not None else self.model_facts()[1],
            is_function_calling_model=False,
            model_name=self.resolved_model_name,
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
        events = self.get_engine().stream(prompt_ids, params=self.generation_params(**kwargs))
        return self._wrap(events, active_span_id.get())

    def _wrap(self, events: Iterator[StepEvent], span_id: str | None) -> Iterator[CompletionResponse]:
        text = ""
        for event in events:
            text += event.text
            yield self._response(text, event, span_id)

    def _aresponses(self, prompt_ids: list[int], kwargs: dict[str, Any]) -> AsyncIterator[CompletionResponse]:
        # As _responses: called in the caller's body.
        events = self.get_engine().astream(prompt_ids, params=self.generation_params(**kwargs))
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
