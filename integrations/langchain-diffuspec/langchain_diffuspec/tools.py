"""Tools bound to a chat call: ``tool_choice``, and reading the answer's ``<tool_call>`` blocks back.

A forcing ``tool_choice`` is an instruction in the prompt (the chat template's ``tool_choice`` variable when it
has one, else a system line) and the call's opening written after it (``diffuspec.chat.forced_call_prefix``),
checked afterwards: an answer that does not complete a valid call gets no silent pass. Calls that are malformed, name a tool that is not bound, or
are not the one ``tool_choice`` asks for go to ``invalid_tool_calls``; a missing forced call adds an entry
there too. Each entry's ``error`` says what went wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffuspec.chat import parse_tool_calls
from diffuspec.config import DiffuSpecError

FORCING = ("required", "any")  # OpenAI's and LangChain's names for "some tool must be called"


@dataclass(frozen=True)
class ToolSpec:
    """OpenAI-format tool schemas and the normalised choice: None (the model decides), "none" (tools are
    not offered, the answer is plain text), "required", or the name of the tool that must be called."""

    schemas: tuple[dict[str, Any], ...]
    choice: str | None = None

    @classmethod
    def of(cls, schemas: Sequence[dict[str, Any]], tool_choice: Any = None) -> ToolSpec:
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
                f"or the name of a bound tool ({', '.join(names) or 'none bound'})"
            )
        if choice is not None and choice != "none" and not names:
            raise DiffuSpecError(f"tool_choice={tool_choice!r} needs tools: pass them to bind_tools")
        return cls(tuple(schemas), choice)

    @property
    def offered(self) -> list[dict[str, Any]] | None:
        """The schemas the prompt lists (none with ``tool_choice="none"``)."""
        return None if self.choice == "none" else list(self.schemas)

    @property
    def reads_calls(self) -> bool:
        return self.offered is not None

    def read(self, text: str) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
        """(content, tool_calls, invalid_tool_calls) of an answer, in LangChain's dict shapes; invalid ones
        keep the raw block as ``args``."""
        names = {s["function"]["name"] for s in self.schemas}
        content, blocks = parse_tool_calls(text)
        calls, invalid = [], []
        for block in blocks:
            error = block["error"]
            if error is None and block["name"] not in names:
                error = f"no tool named {block['name']!r} is bound (bound: {', '.join(sorted(names))})"
            elif error is None and self.choice not in (None, "required") and block["name"] != self.choice:
                error = f"tool_choice asks for {self.choice!r}, not {block['name']!r}"
            if error is None:
                calls.append({"name": block["name"], "args": block["args"], "id": block["id"], "type": "tool_call"})
            else:
                invalid.append({"name": block["name"], "args": block["block"], "id": block["id"], "error": error,
                                "type": "invalid_tool_call"})
        if self.choice not in (None, "none") and not calls:
            named = self.choice != "required"
            wanted = f"call to {self.choice!r}" if named else "tool call"
            invalid.append({"name": self.choice if named else None, "args": None, "id": None,
                            "error": f"tool_choice={self.choice!r} but the answer has no valid {wanted}",
                            "type": "invalid_tool_call"})
        return content, calls, invalid
