"""Tools offered to a chat call, in OpenAI's JSON shape: checking their specs, normalising ``tool_choice``, and
reading the answer's ``<tool_call>`` blocks back into calls. Framework-neutral: the LangChain wrapper and the
server translate ``ToolCall`` / ``InvalidToolCall`` into their own shapes.

A forcing ``tool_choice`` is an instruction in the prompt (``chat.tool_choice_line``) and the call's opening
written after it (``chat.forced_call_prefix``), checked afterwards: an answer that does not complete a valid call
gets no silent pass. Calls that are malformed, name a tool that is not offered, or are not the one
``tool_choice`` asks for are invalid; a missing forced call is one more invalid entry. Each says what went wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .chat import parse_tool_calls
from .errors import DiffuSpecError

FORCING = ("required", "any")  # OpenAI's and LangChain's names for "some tool must be called"


def tool_spec(name: str, parameters: dict[str, Any], description: str = "") -> dict[str, Any]:
    """An OpenAI-format tool from a name and a JSON schema of its arguments."""
    function = {"name": name, "description": description, "parameters": parameters}
    return {"type": "function", "function": function if description else {"name": name, "parameters": parameters}}


def check_tool(tool: Any) -> dict[str, Any]:
    """``tool`` if it is an OpenAI-format tool (``{"type": "function", "function": {"name": ..., "parameters":
    {...}}}``), else an error saying what is wrong."""
    shape = 'a tool is {"type": "function", "function": {"name": "...", "description": "...", "parameters": {...}}}'
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(tool.get("function"), dict):
        raise DiffuSpecError(f"tool {tool!r} is not understood: {shape}")
    function = tool["function"]
    if not isinstance(function.get("name"), str) or not function["name"]:
        raise DiffuSpecError(f"tool {tool!r} has no name: {shape}")
    if not isinstance(function.get("parameters", {}), dict):
        raise DiffuSpecError(f"the parameters of tool {function['name']!r} are not a JSON schema object: {shape}")
    return tool


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class InvalidToolCall:
    id: str | None
    name: str | None
    text: str | None  # the block as written (None: a forced call that is missing altogether)
    error: str


@dataclass(frozen=True)
class ToolSpec:
    """OpenAI-format tool schemas and the normalised choice: None (the model decides), "none" (tools are
    not offered, the answer is plain text), "required", or the name of the tool that must be called."""

    schemas: tuple[dict[str, Any], ...]
    choice: str | None = None

    @classmethod
    def of(cls, schemas: Sequence[dict[str, Any]], tool_choice: Any = None) -> ToolSpec:
        schemas = [check_tool(s) for s in schemas]
        names = [s["function"]["name"] for s in schemas]
        choice = tool_choice
        if isinstance(tool_choice, dict):  # {"type": "function", "function": {"name": n}} or {"name": n}
            choice = (tool_choice.get("function") or tool_choice).get("name") or tool_choice.get("type")
        if choice in FORCING:
            choice = "required"
        elif choice == "auto":
            choice = None
        ok = choice in (None, "none", "required") or (isinstance(choice, str) and choice in names)
        if not ok:
            raise DiffuSpecError(
                f"tool_choice {tool_choice!r} is not understood: use 'auto', 'none', 'required' (or 'any'), "
                f"or the name of a given tool ({', '.join(names) or 'none given'})"
            )
        if choice is not None and choice != "none" and not names:
            raise DiffuSpecError(f"tool_choice={tool_choice!r} needs tools: give them with it")
        return cls(tuple(schemas), choice)

    @property
    def offered(self) -> list[dict[str, Any]] | None:
        """The schemas the prompt lists (none with ``tool_choice="none"``)."""
        return None if self.choice == "none" else list(self.schemas)

    @property
    def reads_calls(self) -> bool:
        return self.offered is not None

    def read(self, text: str) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
        """(content, calls, invalid calls) of an answer."""
        names = {s["function"]["name"] for s in self.schemas}
        content, blocks = parse_tool_calls(text)
        calls, invalid = [], []
        for block in blocks:
            error = block["error"]
            if error is None and block["name"] not in names:
                error = f"no tool named {block['name']!r} is offered (offered: {', '.join(sorted(names))})"
            elif error is None and self.choice not in (None, "required") and block["name"] != self.choice:
                error = f"tool_choice asks for {self.choice!r}, not {block['name']!r}"
            if error is None:
                calls.append(ToolCall(block["id"], block["name"], block["args"]))
            else:
                invalid.append(InvalidToolCall(block["id"], block["name"], block["block"], error))
        if self.choice not in (None, "none") and not calls:
            named = self.choice != "required"
            wanted = f"call to {self.choice!r}" if named else "tool call"
            invalid.append(InvalidToolCall(None, self.choice if named else None, None,
                                           f"tool_choice={self.choice!r} but the answer has no valid {wanted}"))
        return content, calls, invalid
