"""``ChatDiffuSpec``: the diffuspec engine as a LangChain chat model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from diffuspec.chat import TOOL_CALL_OPEN, format_chat, parse_tool_calls, visible_text
from diffuspec.stopping import safe_length
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel, agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict

from ._common import EngineFields, final_info, step_info, usage

_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}


def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as transformers chat-template dicts (System/Human/AI/Tool)."""
    out = []
    for message in messages:
        if message.type not in _ROLES:
            raise ValueError(f"unsupported message type {message.type!r}: use System, Human, AI or Tool messages")
        entry: dict[str, Any] = {"role": _ROLES[message.type], "content": message.text}
        if isinstance(message, AIMessage) and message.tool_calls:
            entry["tool_calls"] = [
                {"type": "function", "function": {"name": call["name"], "arguments": call["args"]}}
                for call in message.tool_calls
            ]
        if isinstance(message, ToolMessage):
            entry["tool_call_id"] = message.tool_call_id
            if message.name:
                entry["name"] = message.name
        out.append(entry)
    return out


class _ChunkMaker:
    """Turns engine step events into chat chunks. With tools bound, text from the first ``<tool_call>`` on is
    held back and parsed into tool-call chunks at the end."""

    def __init__(self, tools: list[dict] | None, prompt_tokens: int, model_name: str) -> None:
        self.tools, self.prompt_tokens, self.model_name = tools, prompt_tokens, model_name
        self.text, self.shown = "", 0

    def __call__(self, event) -> ChatGenerationChunk:
        self.text += event.text
        info = step_info(event.accepted, event.draft_length)
        if event.finish_reason is None:
            visible = self.text
            if self.tools:
                visible = visible_text(self.text)
                visible = visible[: safe_length(visible, [TOOL_CALL_OPEN])]
            delta, self.shown = visible[self.shown :], len(visible)
            return ChatGenerationChunk(message=AIMessageChunk(content=delta), generation_info=info)
        content, calls = visible_text(self.text) if self.tools else self.text, []
        if self.tools:
            leftover, calls = parse_tool_calls(self.text[len(content) :])
            content += leftover
        message = AIMessageChunk(
            content=content[self.shown :],
            tool_call_chunks=[
                {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
                for i, c in enumerate(calls)
            ],
            usage_metadata=usage(self.prompt_tokens, event.stats),
            chunk_position="last",
        )
        info.update(final_info(event.stats, "tool_calls" if calls else event.finish_reason, self.model_name))
        return ChatGenerationChunk(message=message, generation_info=info)


class ChatDiffuSpec(EngineFields, BaseChatModel):
    """LangChain chat model on the diffuspec engine: lossless speculative decoding, streamed with per-step
    acceptance figures in each chunk's ``response_metadata``.

    >>> chat = ChatDiffuSpec()                          # embedded demo pair
    >>> chat = ChatDiffuSpec(target="Qwen/Qwen2.5-7B-Instruct", drafter="Dream-org/Dream-v0-Base-7B")
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, protected_namespaces=())

    @property
    def _llm_type(self) -> str:
        return "diffuspec-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.resolved_model_name, "drafter": self.drafter, "mode": self.mode}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any):
        params = super()._get_ls_params(stop=stop, **kwargs)
        params.update(
            ls_provider="diffuspec", ls_model_name=kwargs.get("model", self.resolved_model_name), ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop or self.stop:
            params["ls_stop"] = [*(self.stop or []), *(stop or [])]
        return params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer tools to the model: their schemas go into the chat template; calls come back parsed from
        ``<tool_call>{...}</tool_call>`` into ``AIMessage.tool_calls``."""
        return self.bind(tools=[convert_to_openai_tool(tool) for tool in tools], **kwargs)

    def _start(self, messages: list[BaseMessage], stop, kwargs) -> tuple[list[int], dict, _ChunkMaker]:
        engine = self.get_engine()
        tools = kwargs.get("tools")
        prompt = format_chat(engine.tokenizer, to_chat_dicts(messages), tools)
        return prompt, self.generation_kwargs(stop, kwargs), _ChunkMaker(tools, len(prompt), self.resolved_model_name)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        prompt, call, make_chunk = self._start(messages, stop, kwargs)
        for event in self.get_engine().stream(prompt, **call):
            chunk = make_chunk(event)
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        prompt, call, make_chunk = self._start(messages, stop, kwargs)
        async for event in self.get_engine().astream(prompt, **call):
            chunk = make_chunk(event)
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
