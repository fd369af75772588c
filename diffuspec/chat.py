"""Chat prompts and tool calls, shared by the framework integrations.

Messages are plain dicts as in transformers' chat templates: ``{"role": "system"|"user"|"assistant"|"tool",
"content": str}``, assistant messages may carry ``tool_calls`` and tool messages a ``name``. Roles other
frameworks use are mapped onto these (``ROLE_ALIASES``). A tokenizer with a chat template formats messages
itself (tools included when the template supports them); otherwise the documented fallback format below is
used. Tool calls are read back in the Hermes/Qwen convention:
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from .config import DiffuSpecError

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {  # LangChain's message types and LlamaIndex's extra roles
    "human": "user",
    "ai": "assistant",
    "developer": "system",
    "chatbot": "assistant",
    "model": "assistant",
    "function": "tool",
}
FALLBACK_HEADERS = {"system": "### System", "user": "### User", "assistant": "### Assistant", "tool": "### Tool"}


def canonical_role(role: str) -> str:
    """``role`` as one of ``ROLES``; an unknown role is an error naming the accepted ones."""
    role = ROLE_ALIASES.get(role, role)
    if role not in ROLES:
        accepted = ", ".join([*ROLES, *ROLE_ALIASES])
        raise DiffuSpecError(f"unknown chat role {role!r}: use one of {accepted}")
    return role


def tool_choice_line(tool_choice: str | None) -> str | None:
    """The instruction that forces a tool call (the demo chat template's own wording): ``tool_choice`` is
    "required"/"any", a tool name, or None/"auto"/"none" for no instruction."""
    if tool_choice in (None, "auto", "none"):
        return None
    return "You must call a tool." if tool_choice in ("required", "any") else f"You must call the {tool_choice} tool."


def with_system_line(messages: list[dict[str, Any]], line: str) -> list[dict[str, Any]]:
    """``messages`` with ``line`` appended to the leading system message (one is added if there is none):
    where every chat template accepts an instruction."""
    if messages and canonical_role(messages[0]["role"]) == "system":
        first = messages[0]
        return [{**first, "content": f"{first.get('content') or ''}\n{line}".strip()}, *messages[1:]]
    return [{"role": "system", "content": line}, *messages]


def fallback_chat_format(
    messages: list[dict[str, Any]], tools: list[dict] | None = None, tool_choice: str | None = None
) -> str:
    """``### Role:`` sections separated by blank lines, ending with an open ``### Assistant:`` section.
    Tools are listed as JSON in a system section with the instruction to call them in ``<tool_call>`` tags."""
    sections = []
    if tools:
        listing = "\n".join(json.dumps(tool) for tool in tools)
        instruction = f'To call one, answer with {TOOL_CALL_OPEN}{{"name": ..., "arguments": {{...}}}}{TOOL_CALL_CLOSE}.'
        forced = tool_choice_line(tool_choice)
        sections.append(
            f"{FALLBACK_HEADERS['system']}:\nYou may call these tools:\n{listing}\n{instruction}"
            + (f"\n{forced}" if forced else "")
        )
    for message in messages:
        role = canonical_role(message["role"])
        header = FALLBACK_HEADERS[role]
        if role == "tool" and message.get("name"):
            header += f" ({message['name']})"
        body = message.get("content") or ""
        for call in message.get("tool_calls") or []:
            body += f"\n{TOOL_CALL_OPEN}{json.dumps(call['function'])}{TOOL_CALL_CLOSE}"
        sections.append(f"{header}:\n{body.strip()}")
    sections.append(f"{FALLBACK_HEADERS['assistant']}:\n")
    return "\n\n".join(sections)


def forced_call_prefix(tool_choice: str | None) -> str:
    """How the answer starts when ``tool_choice`` forces a call: a model is not left to decide whether to obey
    the instruction, its answer is the target's continuation of the opened ``<tool_call>`` (and, for a named
    tool, of the name already written). Empty when nothing is forced."""
    if tool_choice in (None, "auto", "none"):
        return ""
    if tool_choice in ("required", "any"):
        return f'{TOOL_CALL_OPEN}{{"name": "'
    return f'{TOOL_CALL_OPEN}{{"name": {json.dumps(tool_choice)}, "arguments": '


def format_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict] | None = None,
    tool_choice: str | None = None,
    answer_prefix: str = "",
) -> list[int]:
    """Prompt token ids for ``messages``: the tokenizer's chat template, else ``fallback_chat_format``,
    followed by ``answer_prefix`` (the start of the assistant's answer, e.g. ``forced_call_prefix``).

    ``tool_choice`` ("required"/"any" or a tool name) forces a tool call: a template that reads a
    ``tool_choice`` variable gets it, any other template gets ``tool_choice_line`` in the system message.
    """
    messages = [{**m, "role": canonical_role(m["role"])} for m in messages]
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return tokenizer(fallback_chat_format(messages, tools, tool_choice) + answer_prefix)["input_ids"]
    extra = {}
    forced = tool_choice_line(tool_choice) if tools else None
    if forced and "tool_choice" in str(template):
        extra["tool_choice"] = tool_choice
    elif forced:
        messages = with_system_line(messages, forced)
    text = tokenizer.apply_chat_template(
        messages, tools=tools or None, add_generation_prompt=True, tokenize=False, **extra
    )
    # Tokenised as one text, as apply_chat_template itself does: the prefix merges as it would in training.
    return tokenizer(text + answer_prefix, add_special_tokens=False)["input_ids"]


def visible_text(text: str) -> str:
    """The part of a growing answer to show: everything before the first tool call."""
    cut = text.find(TOOL_CALL_OPEN)
    return text if cut == -1 else text[:cut]


def _read_call(body: str) -> tuple[str | None, dict | None, str | None]:
    """(name, args, error) of one ``<tool_call>`` body; error is None for a well-formed call."""
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as e:
        return None, None, f"the tool call is not valid JSON ({e})"
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        return None, None, 'the tool call has no "name" string'
    name, args = payload["name"], payload.get("arguments", payload.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError as e:
            return name, None, f"the arguments of {name!r} are not valid JSON ({e})"
    if not isinstance(args, dict):
        return name, None, f"the arguments of {name!r} are not a JSON object"
    return name, args, None


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split an answer into its plain content and its ``<tool_call>`` blocks, each read into
    ``{"id", "name", "args", "block", "error"}``: ``block`` is the raw text as written, ``error`` None for a
    well-formed call, else why it is not one (then ``args`` is None, and ``name`` too if unreadable). A
    ``<tool_call>`` left open at the end (the answer was cut off) is a malformed block."""
    blocks = []

    def read(block: str, body: str, error: str | None = None) -> str:
        name, args, bad = _read_call(body.strip())
        blocks.append({"id": f"call_{uuid.uuid4().hex[:12]}", "name": name, "args": None if error else args,
                       "block": block, "error": error or bad})
        return ""  # the block leaves the content

    content = _TOOL_CALL.sub(lambda m: read(m.group(0), m.group(1)), text)
    cut = content.find(TOOL_CALL_OPEN)
    if cut != -1:
        read(content[cut:], content[cut + len(TOOL_CALL_OPEN) :],
             f"the answer ended inside a {TOOL_CALL_OPEN} block (no {TOOL_CALL_CLOSE})")
        content = content[:cut]
    return content.strip(), blocks
