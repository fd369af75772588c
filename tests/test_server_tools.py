"""Tools, tool_choice and response_format through the server, with the real ``openai`` client and a LangChain
tool-calling agent (``ChatOpenAI``). The tiny model cannot write tool calls, so most answers here come from a
scripted backend: what is tested is the protocol (the prompt the model would see, the calls read back, streamed
as OpenAI streams them); the last test forces a call from the real tiny model."""

from __future__ import annotations

import json

import openai
import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from live_server import WAIT, LiveServer, ScriptedBackend
from transformers import AutoTokenizer

from diffuspec import DiffuSpec
from diffuspec.loading import embedded_paths
from diffuspec.server.app import EngineBackend

ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
CALL = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(embedded_paths()["target"])


@pytest.fixture
def scripted(tokenizer):
    """(server, backend) answering the given answers in turn (each a list of step texts)."""
    servers = []

    def make(*answers: list[str]) -> tuple[LiveServer, ScriptedBackend]:
        backend = ScriptedBackend(tokenizer, list(answers))
        servers.append(LiveServer(backend, "tiny"))
        return servers[-1], backend

    yield make
    for server in servers:
        server.stop()


def client_of(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=WAIT)


def test_tool_calls_come_back_in_openais_shape(scripted):
    server, backend = scripted(["Let me add. <to", CALL[3:-4], "all>"])
    response = client_of(server).chat.completions.create(model="tiny", messages=QUESTION, tools=[ADD])
    message, choice = response.choices[0].message, response.choices[0]
    assert choice.finish_reason == "tool_calls" and message.content == "Let me add. "
    call = message.tool_calls[0]
    assert call.type == "function" and call.function.name == "add" and json.loads(call.function.arguments) == {
        "a": 2, "b": 3} and call.id.startswith("call_")
    assert "Add two integers." in backend.requests[-1][0]  # the tool was offered in the prompt


def test_streamed_tool_calls_are_held_back_then_sent_whole(scripted):
    server, _ = scripted(["Let me add. <to", CALL[3:-4], "all>"])
    chunks = list(client_of(server).chat.completions.create(model="tiny", messages=QUESTION, tools=[ADD],
                                                            stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    calls = [tc for c in chunks for tc in c.choices[0].delta.tool_calls or []]
    assert text == "Let me add. " and "<to" not in text  # the tag's start never reached the client
    assert [(c.index, c.function.name, json.loads(c.function.arguments)) for c in calls] == [(0, "add", {"a": 2, "b": 3})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_forced_tool_choice_opens_the_call_and_bad_calls_are_reported(scripted):
    server, backend = scripted(['{"a": 2, "b": 3}}</tool_call>'], ['{"a": 2,}}</tool_call>'])
    client = client_of(server)
    forced = {"type": "function", "function": {"name": "add"}}
    good = client.chat.completions.create(model="tiny", messages=QUESTION, tools=[ADD], tool_choice=forced)
    assert backend.requests[-1][0].endswith('<tool_call>{"name": "add", "arguments": ')  # the prompt opens it
    assert json.loads(good.choices[0].message.tool_calls[0].function.arguments) == {"a": 2, "b": 3}
    bad = client.chat.completions.create(model="tiny", messages=QUESTION, tools=[ADD], tool_choice="required")
    assert not bad.choices[0].message.tool_calls and bad.choices[0].finish_reason == "stop"
    assert bad.choices[0].message.content.startswith('<tool_call>{"name": "')  # the malformed block, as written
    errors = bad.model_extra["diffuspec"]["tool_call_errors"]
    assert any("not valid JSON" in e for e in errors) and any("no valid tool call" in e for e in errors)


def test_tool_results_reach_the_prompt_named_after_their_call(scripted):
    server, backend = scripted(["It is 5."])
    messages = [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "5"}]
    answer = client_of(server).chat.completions.create(model="tiny", messages=messages, tools=[ADD])
    prompt = backend.requests[-1][0]
    assert answer.choices[0].message.content == "It is 5." and '"a": 2' in prompt and "5" in prompt.split("2 + 3?")[1]


def test_response_format_asks_for_the_schema(scripted):
    server, backend = scripted(['{"answer": 5}'])
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    response = client_of(server).chat.completions.create(
        model="tiny", messages=QUESTION, response_format={"type": "json_schema", "json_schema": {
            "name": "sum", "schema": schema}})
    assert json.loads(response.choices[0].message.content) == {"answer": 5}
    assert json.dumps(schema) in backend.requests[-1][0]
    client_of(server).chat.completions.create(model="tiny", messages=QUESTION, response_format={"type": "json_object"})
    assert "Answer with one JSON object" in backend.requests[-1][0]


def test_a_langchain_agent_calls_the_tool_and_answers(scripted):
    server, backend = scripted([CALL], ["2 + 3 is 5."])
    chat = ChatOpenAI(model="tiny", base_url=server.base_url, api_key="none", temperature=0, max_retries=0)
    agent = create_agent(chat, tools=[add])
    messages = agent.invoke({"messages": [HumanMessage("What is 2 + 3?")]})["messages"]
    assert [m.type for m in messages] == ["human", "ai", "tool", "ai"]
    assert messages[1].tool_calls[0]["name"] == "add" and messages[1].tool_calls[0]["args"] == {"a": 2, "b": 3}
    assert messages[2].content == "5" and messages[3].content == "2 + 3 is 5."
    assert "5" in backend.requests[1][0].split("What is 2 + 3?")[1]  # the tool's result went back to the model


def test_the_tiny_model_answers_a_forced_call_in_the_protocols_terms():
    """The real model behind a forced tool_choice: whatever it writes, the answer is a parsed call or the
    forced opening with its errors reported, never a silent pass."""
    server = LiveServer(EngineBackend(DiffuSpec.from_pretrained("tiny", device="cpu")), "tiny")
    try:
        chat = ChatOpenAI(model="tiny", base_url=server.base_url, api_key="none", temperature=0, max_tokens=40,
                          max_retries=0).bind_tools([add], tool_choice="add")
        message = chat.invoke("What is 2 + 3?")
        if message.tool_calls:
            assert message.tool_calls[0]["name"] == "add" and isinstance(message.tool_calls[0]["args"], dict)
        else:
            assert message.content.startswith('<tool_call>{"name": "add", "arguments": ')
        raw = client_of(server).chat.completions.create(model="tiny", messages=QUESTION, tools=[ADD],
                                                        tool_choice="required", max_tokens=40, temperature=0)
        assert raw.choices[0].message.tool_calls or raw.model_extra["diffuspec"]["tool_call_errors"]
    finally:
        server.stop()
