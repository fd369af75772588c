"""diffuspec.chat: chat prompts (template or fallback, roles, forced tool choice) and reading tool calls back."""

import pytest
from transformers import AutoTokenizer

from diffuspec import DiffuSpecError
from diffuspec.chat import canonical_role, format_chat, parse_tool_calls, with_system_line
from diffuspec.loading import embedded_paths

TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": {}}}]
USER = [{"role": "user", "content": "x = 1"}]


@pytest.fixture()
def tokenizer():
    return AutoTokenizer.from_pretrained(embedded_paths()["target"])


def _decoded(tokenizer, messages, tools=None, tool_choice=None):
    return tokenizer.decode(format_chat(tokenizer, messages, tools, tool_choice))


def test_roles_of_every_framework_map_onto_four():
    assert [canonical_role(r) for r in ("human", "ai", "developer", "chatbot", "model", "function", "tool")] == [
        "user", "assistant", "system", "assistant", "assistant", "tool", "tool"]
    with pytest.raises(DiffuSpecError, match="unknown chat role 'narrator': use one of system, user"):
        canonical_role("narrator")


def test_a_chat_template_is_used_when_present(tokenizer):
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    assert _decoded(tokenizer, [{"role": "developer", "content": "be brief"}, *USER]) == (
        "<system>be brief<user>x = 1<assistant>")


def test_forced_tool_choice_reaches_any_template(tokenizer):
    """A template that reads ``tool_choice`` gets the variable; any other gets the line in its system message."""
    tokenizer.chat_template = "{% if tool_choice %}[{{ tool_choice }}]{% endif %}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    assert _decoded(tokenizer, USER, TOOLS, "add") == "[add]<user>x = 1"
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    assert _decoded(tokenizer, USER, TOOLS, "add") == "<system>You must call the add tool.<user>x = 1"
    assert _decoded(tokenizer, [{"role": "system", "content": "Hi."}, *USER], TOOLS, "required") == (
        "<system>Hi.\nYou must call a tool.<user>x = 1")
    assert _decoded(tokenizer, USER, TOOLS, "auto") == "<user>x = 1"


def test_fallback_format_lists_tools_and_the_forced_choice(tokenizer):
    tokenizer.chat_template = None
    text = _decoded(tokenizer, USER, TOOLS, "required")
    assert text.startswith("### System:\nYou may call these tools:\n") and "Add two integers." in text
    assert "You must call a tool.\n\n### User:\nx = 1\n\n### Assistant:\n" in text
    assert "You must" not in _decoded(tokenizer, USER, TOOLS)


def test_with_system_line_adds_or_extends_the_system_message():
    assert with_system_line(USER, "Be brief.") == [{"role": "system", "content": "Be brief."}, *USER]
    assert with_system_line([{"role": "system", "content": "Hi."}], "Be brief.") == [
        {"role": "system", "content": "Hi.\nBe brief."}]


def test_tool_call_blocks_are_read_with_their_errors():
    text = ('Sure. <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call> and '
            '<tool_call>{"name": "add", "arguments": "{\\"a\\": 2}"}</tool_call><tool_call>oops</tool_call>'
            '<tool_call>{"name": "neg", "arguments": {"x"')
    content, blocks = parse_tool_calls(text)
    assert content == "Sure.  and"
    assert [(b["name"], b["args"]) for b in blocks] == [("add", {"a": 1}), ("add", {"a": 2}), (None, None), (None, None)]
    assert blocks[0]["error"] is None and blocks[1]["error"] is None
    assert "not valid JSON" in blocks[2]["error"] and blocks[2]["block"] == "<tool_call>oops</tool_call>"
    assert "ended inside" in blocks[3]["error"] and blocks[3]["block"].startswith('<tool_call>{"name": "neg"')
    assert len({b["id"] for b in blocks}) == 4
