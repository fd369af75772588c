"""``ChatDiffuSpec``: the diffuspec engine as a LangChain chat model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage, ToolMessage
from langchain_core.messages.utils import message_chunk_to_message
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.utils import LC_ID_PREFIX

from diffuspec.chat import canonical_role, format_chat
from diffuspec.chat_turn import AnswerReader, ChatTurn, prepare_turn, response_format_line
from diffuspec.integration import CALL_ARGUMENTS, refuse_unknown
from diffuspec.params import GenerationParams
from diffuspec.tools import InvalidToolCall, ToolSpec

from ._common import LangChainFields, StepEvents, final_info, step_info, usage
from .structured_output import structured_output

_STEP_EVENTS = "_diffuspec_step_events"  # call kwarg carrying StepEvents into _stream from stream()/astream()
CHAT_ARGUMENTS = (*CALL_ARGUMENTS, "tools", "tool_choice", "response_format")


def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as transformers chat-template dicts."""
    out = []
    for message in messages:
        role = canonical_role(message.role if isinstance(message, ChatMessage) else message.type)
        entry: dict[str, Any] = {"role": role, "content": message.text}
        if isinstance(message, AIMessage) and message.tool_calls:
            entry["tool_calls"] = [
                {"type": "function", "function": {"name": call["name"], "arguments": call["args"]}}
                for call in message.tool_calls
            ]
        if isinstance(message, ToolMessage):
            entry["tool_call_id"] = message.tool_call_id
        if role == "tool" and message.name:
            entry["name"] = message.name
        out.append(entry)
    return out


def invalid_tool_call(call: InvalidToolCall) -> dict[str, Any]:
    """LangChain's shape of an invalid call: ``args`` holds the block as written."""
    return {"name": call.name, "args": call.text, "id": call.id, "error": call.error, "type": "invalid_tool_call"}


class _Turn:
    """One chat call (``diffuspec.chat_turn``) with its generation params, turning engine step events into
    chunks."""

    def __init__(self, turn: ChatTurn, params: GenerationParams, model_name: str):
        self.prompt_ids, self.params, self.model_name = turn.prompt_ids, params, model_name
        self.reader = AnswerReader(turn)
        self.invalid_tool_calls: list[dict[str, Any]] = []  # with their errors, which chunks cannot carry

    def chunk(self, event: Any) -> ChatGenerationChunk:
        info = step_info(event.accepted, event.draft_length)
        if event.finish_reason is None:
            return ChatGenerationChunk(message=AIMessageChunk(content=self.reader.add(event.text)),
                                       generation_info=info)
        answer = self.reader.finish(event.text)
        self.invalid_tool_calls = [invalid_tool_call(c) for c in answer.invalid_calls]
        # Malformed blocks travel as chunks whose args are the raw block (not JSON, so LangChain's chunk
        # merging lists them in invalid_tool_calls); errors go in the metadata, as chunks have no place for them.
        calls = [{"name": c.name, "args": json.dumps(c.arguments), "id": c.id} for c in answer.calls]
        malformed = [c for c in self.invalid_tool_calls if c["args"] is not None]  # an unmet choice has no block
        message = AIMessageChunk(
            content=answer.delta,
            tool_call_chunks=[
                {"name": c["name"], "args": c["args"], "id": c["id"], "index": i}
                for i, c in enumerate([*calls, *malformed])
            ],
            usage_metadata=usage(len(self.prompt_ids), event.stats),
            chunk_position="last",
        )
        info.update(final_info(event.stats, "tool_calls" if calls else event.finish_reason, self.model_name))
        if self.invalid_tool_calls:
            info["tool_call_errors"] = [c["error"] for c in self.invalid_tool_calls]
        return ChatGenerationChunk(message=message, generation_info=info)

    def result(self, chunks: list[ChatGenerationChunk]) -> ChatResult:
        """The whole answer, with invalid tool calls complete (their errors included)."""
        merged = sum(chunks[1:], chunks[0])
        message = message_chunk_to_message(merged.message)
        message.invalid_tool_calls = self.invalid_tool_calls
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=merged.generation_info)])


class ChatDiffuSpec(LangChainFields, BaseChatModel):
    """LangChain chat model on the diffuspec engine: lossless speculative decoding, streamed with per-step
    acceptance figures in each chunk's ``response_metadata`` and a ``diffuspec_step`` custom callback event
    per step.

    >>> chat = ChatDiffuSpec()                          # embedded demo pair
    >>> chat = ChatDiffuSpec(model_id="Qwen/Qwen2.5-7B-Instruct", drafter="Dream-org/Dream-v0-Base-7B",
    ...                      dtype="bfloat16", device_map="auto")
    """

    @property
    def _llm_type(self) -> str:
        return "diffuspec-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.identity()

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        kwargs.pop(_STEP_EVENTS, None)  # plumbing, not a parameter to trace
        return super()._get_invocation_params(stop=stop, **kwargs)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        params = super()._get_ls_params(stop=stop, **kwargs)
        defaults = self.generation_params()
        params.update(
            ls_provider="diffuspec", ls_model_name=kwargs.get("model", self.resolved_model_name), ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", defaults.temperature),
            ls_max_tokens=kwargs.get("max_tokens", kwargs.get("max_new_tokens", defaults.max_new_tokens)),
        )
        if stop or defaults.stop:
            params["ls_stop"] = [*defaults.stop, *(stop or [])]
        return params

    def _should_stream(self, *, async_api: bool, run_manager: Any = None, **kwargs: Any) -> bool:
        # invoke always goes through _generate, which streams anyway (every step reaches the run's callbacks)
        # and alone can return invalid tool calls with their errors.
        return bool(kwargs.get("stream")) and super()._should_stream(
            async_api=async_api, run_manager=run_manager, **kwargs
        )

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[dict[str, Any] | type | Callable | BaseTool] | None = None
    ) -> int:
        """Exactly the prompt tokens these messages (and tools) make."""
        schemas = [convert_to_openai_tool(t) for t in tools] if tools else None
        return len(format_chat(self.get_engine().tokenizer, to_chat_dicts(messages), schemas))

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer tools: their schemas go into the chat template, calls come back parsed from
        ``<tool_call>{...}</tool_call>`` into ``AIMessage.tool_calls``. ``tool_choice``: None/"auto" (the model
        decides), "none" (tools not offered), "required"/"any", or a tool's name (or ``{"type": "function",
        "function": {"name": ...}}``): forcing choices are instructed in the prompt and checked, and an answer
        without the call carries an entry in ``invalid_tool_calls`` saying so (see ``tools.py``)."""
        schemas = [convert_to_openai_tool(tool) for tool in tools]
        spec = ToolSpec.of(schemas, tool_choice)  # a bad choice or argument fails here, not at the first call
        self._split_call(kwargs)
        return self.bind(tools=schemas, tool_choice=spec.choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: str = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Answers in ``schema``'s shape (a pydantic class, TypedDict or JSON schema): ``method`` is
        "function_calling" (a forced tool call), "json_schema" (a JSON answer the prompt asks for, with the
        schema) or "json_mode" (any JSON object). An answer that does not parse or validate raises
        ``OutputParserException``; with ``include_raw=True`` the result is ``{"raw", "parsed",
        "parsing_error"}`` instead. ``strict`` is accepted and changes nothing (generation is not constrained;
        pydantic schemas are always validated)."""
        refuse_unknown("with_structured_output", kwargs, ["schema", "method", "include_raw", "strict"])
        return structured_output(self, schema, method=method, include_raw=include_raw, strict=strict)

    # ----- one call ------------------------------------------------------------------------------------

    def _split_call(
        self, kwargs: dict[str, Any], stop: list[str] | None = None
    ) -> tuple[ToolSpec | None, Any, GenerationParams]:
        """(tools, response_format, generation params) of a call; bad arguments refused."""
        kwargs = {k: v for k, v in kwargs.items() if k != "ls_structured_output_format"}  # a tracing hint
        refuse_unknown(f"{type(self).__name__} call", kwargs, CHAT_ARGUMENTS)
        tools, choice = kwargs.pop("tools", None), kwargs.pop("tool_choice", None)
        spec = ToolSpec.of(tools or [], choice) if tools or choice is not None else None
        response_format = kwargs.pop("response_format", None)
        if response_format is not None:
            response_format_line(response_format)  # understood, or refused now
        return spec, response_format, self.generation_params(stop, **kwargs)

    def _turn(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Turn:
        tools, response_format, params = self._split_call(kwargs, stop)
        turn = prepare_turn(self.get_engine().tokenizer, to_chat_dicts(messages), tools, response_format)
        return _Turn(turn, params, self.resolved_model_name)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        events = kwargs.pop(_STEP_EVENTS, None)
        turn = self._turn(messages, stop, kwargs)
        yield from self._run(turn, run_manager, events)

    def _run(self, turn: _Turn, run_manager: CallbackManagerForLLMRun | None, events: StepEvents | None):
        if run_manager is not None:
            events = StepEvents.of_run(run_manager, CallbackManager)
        for event in self.get_engine().stream(turn.prompt_ids, params=turn.params):
            chunk = turn.chunk(event)
            if run_manager:
                chunk.message.id = f"{LC_ID_PREFIX}-{run_manager.run_id}"  # as LangChain's own streaming sets it
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            if events:
                events.fire(event)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        events = kwargs.pop(_STEP_EVENTS, None)
        turn = self._turn(messages, stop, kwargs)
        async for chunk in self._arun(turn, run_manager, events):
            yield chunk

    async def _arun(self, turn: _Turn, run_manager: AsyncCallbackManagerForLLMRun | None, events: StepEvents | None):
        if run_manager is not None:
            events = StepEvents.of_run(run_manager, AsyncCallbackManager)
        async for event in self.get_engine().astream(turn.prompt_ids, params=turn.params):
            chunk = turn.chunk(event)
            if run_manager:
                chunk.message.id = f"{LC_ID_PREFIX}-{run_manager.run_id}"
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            if events:
                await events.afire(event)
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        events = kwargs.pop(_STEP_EVENTS, None)
        turn = self._turn(messages, stop, kwargs)
        return turn.result(list(self._run(turn, run_manager, events)))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        events = kwargs.pop(_STEP_EVENTS, None)
        turn = self._turn(messages, stop, kwargs)
        return turn.result([chunk async for chunk in self._arun(turn, run_manager, events)])

    # ----- streams started by stream()/astream(), where LangChain gives _stream no run manager --------------

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        config, events = StepEvents.of_config(self, config, CallbackManager)
        yield from super().stream(input, config, stop=stop, **{_STEP_EVENTS: events}, **kwargs)

    async def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        config, events = StepEvents.of_config(self, config, AsyncCallbackManager)
        async for chunk in super().astream(input, config, stop=stop, **{_STEP_EVENTS: events}, **kwargs):
            yield chunk
