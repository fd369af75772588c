"""Chat prompts and tool calls, shared by the framework integrations.

Messages are plain dicts as in transformers' chat templates: ``{"role": "system"|"user"|"assistant"|"tool",
"content": str}``, assistant messages may carry ``tool_calls`` and tool messages a ``name``. A tokenizer with a
chat template formats them itself (tools included when the template supports them); otherwise the documented
fallback format below is used. Tool calls are read back in the Hermes/Qwen convention:
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
FALLBACK_HEADERS = {"system": "### System", "user": "### User", "assistant": "### Assistant", "tool": "### Tool"}


def fallback_chat_format(messages: list[dict[str, Any]], tools: list[dict] | None = None) -> str:
    """``### Role:`` sections separated by blank lines, ending with an open ``### Assistant:`` section.
    Tools are listed as JSON in a system section with the instruction to call them in ``<tool_call>`` tags."""
    sections = []
    if tools:
        listing = "\n".join(json.dumps(tool) for tool in tools)
        sections.append(
            f"{FALLBACK_HEADERS['system']}:\nYou may call these tools:\n{listing}\n"
            f'To call one, answer with {TOOL_CALL_OPEN}{{"name": ..., "arguments": {{...}}}}</tool_call>.'
        )
    for message in messages:
        header = FALLBACK_HEADERS[message["role"]]
        if message["role"] == "tool" and message.get("name"):
            header += f" ({message['name']})"
        body = message.get("content") or ""
        for call in message.get("tool_calls") or []:
            body += f"\n{TOOL_CALL_OPEN}{json.dumps(call['function'])}</tool_call>"
        sections.append(f"{header}:\n{body.strip()}")
    sections.append(f"{FALLBACK_HEADERS['assistant']}:\n")
    return "\n\n".join(sections)


def format_chat(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict] | None = None) -> list[int]:
    """Prompt token ids for ``messages``: the tokenizer's chat template, else ``fallback_chat_format``."""
    if getattr(tokenizer, "chat_template", None):
        return list(
            tokenizer.apply_chat_template(
                messages, tools=tools or None, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
    return tokenizer(fallback_chat_format(messages, tools))["input_ids"]


def visible_text(text: str) -> str:
    """The part of a growing answer to show: everything before the first tool call."""
    cut = text.find(TOOL_CALL_OPEN)
    return text if cut == -1 else text[:cut]


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split an answer into its plain content and its tool calls ``{"id", "name", "args"}``.
    A block that is not valid JSON with a name stays in the content, unparsed."""
    calls = []

    def take(match: re.Match) -> str:
        try:
            payload = json.loads(match.group(1))
            name, args = payload["name"], payload.get("arguments", payload.get("parameters", {}))
            if isinstance(args, str):
                args = json.loads(args)
        except (json.JSONDecodeError, KeyError, TypeError):
            return match.group(0)
        calls.append({"id": f"call_{uuid.uuid4().hex[:12]}", "name": name, "args": args})
        return ""

    content = _TOOL_CALL.sub(take, text).strip()
    return content, calls
