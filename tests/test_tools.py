"""Tool specs, tool_choice, reading calls back, and the chat turn that both the LangChain wrapper and the server
use, on hand-built answers."""

import pytest

from diffuspec.chat_turn import AnswerReader, ChatTurn, response_format_line
from diffuspec.errors import DiffuSpecError
from diffuspec.tools import ToolSpec, check_tool, tool_spec

ADD = tool_spec("add", {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
                "Add two integers.")
NEGATE = tool_spec("negate", {"type": "object", "properties": {"x": {"type": "integer"}}})


def test_tool_specs_are_checked():
    assert check_tool(ADD) is ADD and ADD["function"]["description"] == "Add two integers."
    for bad, what in [({"type": "retrieval"}, "not understood"), ({"type": "function", "function": {}}, "no name"),
                      ({"type": "function", "function": {"name": "f", "parameters": []}}, "not a JSON schema")]:
        with pytest.raises(DiffuSpecError, match=what):
            check_tool(bad)


@pytest.mark.parametrize(("given", "choice"), [
    (None, None), ("auto", None), ("none", "none"), ("required", "required"), ("any", "required"), ("add", "add"),
    ({"type": "function", "function": {"name": "add"}}, "add"),
])
def test_tool_choice_is_normalised(given, choice):
    assert ToolSpec.of([ADD, NEGATE], given).choice == choice


def test_bad_tool_choice_names_the_tools():
    with pytest.raises(DiffuSpecError, match="'mul' is not understood.*add, negate"):
        ToolSpec.of([ADD, NEGATE], "mul")
    with pytest.raises(DiffuSpecError, match="needs tools"):
        ToolSpec.of([], "required")


def test_calls_are_read_and_bad_ones_explained():
    answer = ('Sure. <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
              '<tool_call>{"name": "mul", "arguments": {}}</tool_call><tool_call>{"name": "negate", "arg')
    content, calls, invalid = ToolSpec.of([ADD, NEGATE]).read(answer)
    assert content == "Sure." and [(c.name, c.arguments) for c in calls] == [("add", {"a": 1, "b": 2})]
    assert [i.error.split(" (")[0] for i in invalid] == ["no tool named 'mul' is offered",
                                                         "the answer ended inside a <tool_call> block"]
    assert invalid[0].text == '<tool_call>{"name": "mul", "arguments": {}}</tool_call>'
    _, calls, invalid = ToolSpec.of([ADD, NEGATE], "negate").read(answer)
    assert not calls and "asks for 'negate', not 'add'" in invalid[0].error
    assert invalid[-1].text is None and "no valid call to 'negate'" in invalid[-1].error


def test_the_reader_holds_back_what_may_open_a_call():
    reader = AnswerReader(ChatTurn([1], "", ToolSpec.of([ADD])))
    assert [reader.add(t) for t in ["Let me add. <to", 'ol_call>{"name": "add", "arguments": {}}</tool']] == [
        "Let me add. ", ""]
    answer = reader.finish("_call> done")
    assert (answer.content, answer.delta) == ("Let me add. done", "done")  # the text after the call, stripped
    assert [c.name for c in answer.calls] == ["add"] and not answer.invalid_calls


def test_without_tools_everything_shows_and_a_forced_opening_counts():
    plain = AnswerReader(ChatTurn([1]))
    assert plain.add("a <tool") == "a <tool" and plain.finish("_call>").delta == "_call>"
    forced = AnswerReader(ChatTurn([1], '<tool_call>{"name": "add", "arguments": ', ToolSpec.of([ADD], "add")))
    assert forced.add('{"a": 1') == ""
    answer = forced.finish(', "b": 2}}</tool_call>')
    assert [(c.name, c.arguments) for c in answer.calls] == [("add", {"a": 1, "b": 2})] and answer.content == ""


def test_response_formats():
    assert response_format_line({"type": "text"}) is None
    assert "one JSON object" in response_format_line({"type": "json_object"})
    line = response_format_line({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
    assert line.endswith('{"type": "object"}')
    with pytest.raises(DiffuSpecError, match="not understood"):
        response_format_line({"type": "json_schema", "json_schema": {}})
