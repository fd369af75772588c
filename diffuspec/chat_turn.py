"""One chat call, from messages to answer, shared by the LangChain wrapper and the server: the prompt (chat
template, tools, a JSON answer asked for, a forced tool call's opening) and the reading of the answer as it
streams (text shown as it comes, tool calls held back and read at the end)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .chat import TOOL_CALL_OPEN, forced_call_prefix, format_chat, visible_text, with_system_line
from .errors import DiffuSpecError
from .stopping import safe_length
from .tools import InvalidToolCall, ToolCall, ToolSpec

RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def response_format_line(response_format: Any) -> str | None:
    """The instruction asking for a JSON answer (None for plain text): ``response_format`` as in OpenAI's API,
    ``{"type": "json_object"}``, ``{"type": "json_schema", "json_schema": {"schema": {...}}}`` or
    ``{"type": "text"}``. Generation is not constrained: the answer is to be checked by the caller."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "Answer with one JSON object and nothing else."
    if kind == "json_schema" and isinstance((response_format.get("json_schema") or {}).get("schema"), dict):
        schema = json.dumps(response_format["json_schema"]["schema"])
        return f"Answer with one JSON object and nothing else, following this JSON schema: {schema}"
    raise DiffuSpecError(
        f"response_format {response_format!r} is not understood: use {{'type': 'json_object'}}, "
        "{'type': 'json_schema', 'json_schema': {'schema': {...}}} or {'type': 'text'}"
    )


@dataclass(frozen=True)
class ChatTurn:
    """A chat call ready for the engine: its prompt ids, how the answer starts (a forced call's opening, which
    the prompt ends with), and the tools whose calls the answer may hold."""

    prompt_ids: list[int]
    answer_prefix: str = ""
    tools: ToolSpec | None = None


def prepare_turn(tokenizer: Any, messages: list[dict[str, Any]], tools: ToolSpec | None = None,
                 response_format: Any = None) -> ChatTurn:
    """``messages`` (transformers' chat dicts) as a ``ChatTurn``: tools listed and ``tool_choice`` applied
    (``chat.format_chat``), a JSON answer asked for in the system message."""
    line = response_format_line(response_format) if response_format is not None else None
    if line is not None:
        messages = with_system_line(messages, line)
    offered = tools.offered if tools else None
    choice = tools.choice if offered else None
    prefix = forced_call_prefix(choice)
    return ChatTurn(format_chat(tokenizer, messages, offered, choice, answer_prefix=prefix), prefix, tools)


@dataclass
class Answer:
    content: str  # the answer's text without its tool-call blocks
    delta: str  # the part of ``content`` not yet shown
    calls: list[ToolCall] = field(default_factory=list)
    invalid_calls: list[InvalidToolCall] = field(default_factory=list)


class AnswerReader:
    """Reads one turn's answer as its events arrive. With tools offered, text from the first ``<tool_call>``
    on (and any tail that may begin one) is held back, and read into calls at the end."""

    def __init__(self, turn: ChatTurn) -> None:
        self.tools = turn.tools
        self.text, self.shown = turn.answer_prefix, 0  # a forced call's opening, written in the prompt, is the answer's

    @property
    def reads_calls(self) -> bool:
        return self.tools is not None and self.tools.reads_calls

    def add(self, text: str) -> str:
        """Take a step's text; return what may be shown of it now."""
        self.text += text
        visible = self.text
        if self.reads_calls:
            visible = visible_text(self.text)
            visible = visible[: safe_length(visible, [TOOL_CALL_OPEN])]
        delta, self.shown = visible[self.shown :], len(visible)
        return delta

    def finish(self, text: str = "") -> Answer:
        """Take the last step's text; return the whole answer, read."""
        self.text += text
        content, calls, invalid = self.text, [], []
        if self.reads_calls:
            content = visible_text(self.text)
            rest, calls, invalid = self.tools.read(self.text[len(content) :])
            content += rest
        return Answer(content, content[self.shown :], calls, invalid)
