"""LangChain classes against the real engine on the embedded demo pair."""

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import run_while_ticking
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_diffuspec import STEP_EVENT, ChatDiffuSpec, DiffuSpecLLM
from langchain_diffuspec.chat_models import _ChunkMaker, to_chat_dicts

from diffuspec import DecodingStats, DiffuSpecError, StepEvent
from diffuspec.chat import format_chat

MESSAGES = [SystemMessage("You write Python."), HumanMessage("def parse_args(argv):")]
N = 48


@pytest.fixture(scope="module")
def chat():
    return ChatDiffuSpec(max_tokens=N)


@pytest.fixture(scope="module")
def engine(chat):
    return chat.get_engine()


def _merged(chunks):
    return sum(chunks[1:], chunks[0])


def test_invoke_equals_stream_and_engine(chat, engine):
    message = chat.invoke(MESSAGES)
    chunks = list(chat.stream(MESSAGES))
    merged = _merged(chunks)
    assert merged.content == message.content
    prompt = format_chat(engine.tokenizer, to_chat_dicts(MESSAGES))
    reference = engine.generate(prompt, N)
    assert message.content == reference.text  # the prompt is never echoed
    meta = merged.response_metadata
    assert sum(meta["accepted_tokens"]) == reference.stats.accepted_tokens
    assert meta["draft_lengths"] == reference.stats.draft_lengths
    assert meta["mean_accepted_tokens"] == pytest.approx(reference.stats.mean_accepted_tokens)
    assert meta["model_name"] == "diffuspec-demo" == message.response_metadata["model_name"]
    assert merged.usage_metadata == {
        "input_tokens": len(prompt), "output_tokens": reference.stats.new_tokens,
        "total_tokens": len(prompt) + reference.stats.new_tokens,
    }
    assert message.usage_metadata["output_tokens"] == reference.stats.new_tokens


def test_stop_in_call_and_constructor(chat):
    full = chat.invoke(MESSAGES).content
    stop = full[10:14]
    expected = full[: full.index(stop)]
    assert chat.invoke(MESSAGES, stop=[stop]).content == expected
    assert ChatDiffuSpec(max_tokens=N, stop=[stop]).invoke(MESSAGES).content == expected
    assert "".join(c.content for c in chat.stream(MESSAGES, stop=[stop])) == expected


def test_messages_of_every_kind_reach_the_template(engine):
    messages = [
        SystemMessage("sys"), HumanMessage("hi"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1}, "id": "c1"}]),
        ToolMessage("2", tool_call_id="c1", name="add"),
    ]
    dicts = to_chat_dicts(messages)
    assert [d["role"] for d in dicts] == ["system", "user", "assistant", "tool"]
    text = engine.tokenizer.decode(format_chat(engine.tokenizer, dicts))
    assert "### Tool (add):\n2" in text and '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>' in text
    assert text.endswith("### Assistant:\n")


def test_chat_template_is_used_when_present(engine):
    tokenizer = engine.tokenizer.__class__.from_pretrained(engine.tokenizer.name_or_path)
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    ids = format_chat(tokenizer, [{"role": "user", "content": "x = 1"}])
    assert tokenizer.decode(ids) == "<user>x = 1<assistant>"


def _events(texts):
    stats = DecodingStats()
    for i, text in enumerate(texts):
        stats.record_step(4, 2, 1)
        yield StepEvent(text, [0], 4, 2, stats, "eos" if i == len(texts) - 1 else None)


def test_tool_calls_are_parsed_from_the_stream():
    """The wrapper in isolation, fed scripted engine events (the demo model does not call tools)."""
    make = _ChunkMaker(tools=[{"type": "function"}], prompt_tokens=5, model_name="m")
    texts = ["Let me add. <to", 'ol_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool', "_call>"]
    chunks = [make(e) for e in _events(texts)]
    assert [c.message.content for c in chunks] == ["Let me add. ", "", ""]  # the tag prefix is held back
    message = _merged(chunks).message
    assert message.tool_calls[0]["name"] == "add" and message.tool_calls[0]["args"] == {"a": 1, "b": 2}
    assert _merged(chunks).generation_info["finish_reason"] == "tool_calls"


def test_bind_tools_passes_schemas_to_the_prompt(chat, engine):
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    message = chat.bind_tools([add]).invoke([HumanMessage("2 + 3?")])
    assert isinstance(message, AIMessage)
    prompt = format_chat(engine.tokenizer, [{"role": "user", "content": "2 + 3?"}], [convert_to_openai_tool(add)])
    assert message.usage_metadata["input_tokens"] == len(prompt)
    assert '"name": "add"' in engine.tokenizer.decode(prompt)


def test_async_does_not_block_the_event_loop(chat):
    message, ticks = run_while_ticking(lambda: chat.ainvoke(MESSAGES))
    assert message.content == chat.invoke(MESSAGES).content
    assert ticks >= 3  # the loop kept running while the engine worked


def test_abandoned_async_stream_frees_the_engine(engine):
    long_chat = ChatDiffuSpec(max_tokens=400)

    async def first_chunk():
        async for chunk in long_chat.astream(MESSAGES):
            return chunk

    assert asyncio.run(first_chunk()) is not None
    deadline = time.time() + 10
    while engine._lock.locked() and time.time() < deadline:
        time.sleep(0.01)
    assert not engine._lock.locked()


def test_concurrent_callers_get_their_own_answers(chat):
    prompts = [[HumanMessage(p)] for p in ("import os\n", "class Stack:\n", "for i in range(")]
    expected = [chat.invoke(p).content for p in prompts]
    results = [None] * 3

    def call(i):
        results[i] = chat.invoke(prompts[i]).content

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected

    async def gather():
        return await asyncio.gather(*(chat.ainvoke(p) for p in prompts))

    assert [m.content for m in asyncio.run(gather())] == expected
    assert [m.content for m in chat.batch(prompts)] == expected


def test_errors_reach_the_caller():
    bad = ChatDiffuSpec(max_tokens=0)
    with pytest.raises(DiffuSpecError, match="max_new_tokens"):
        bad.invoke(MESSAGES)
    with pytest.raises(DiffuSpecError, match="max_new_tokens"):
        asyncio.run(bad.ainvoke(MESSAGES))


class Recorder(BaseCallbackHandler):
    def __init__(self):
        self.tokens: list[str] = []
        self.chunks: list[Any] = []
        self.custom: list[dict] = []

    def on_llm_new_token(self, token, *, chunk=None, **kwargs):
        self.tokens.append(token)
        self.chunks.append(chunk)

    def on_custom_event(self, name, data, **kwargs):
        if name == STEP_EVENT:
            self.custom.append(data)


def test_string_llm_callbacks_events_and_llm_output(engine):
    llm = DiffuSpecLLM(max_tokens=N)
    prompt = "def fib(n):\n"
    reference = engine.generate(prompt, N)
    recorder = Recorder()
    streamed = "".join(llm.stream(prompt, config={"callbacks": [recorder]}))
    assert streamed == reference.text == "".join(recorder.tokens)
    assert len(recorder.custom) == reference.stats.steps
    assert sum(e["accepted_tokens"] for e in recorder.custom) == reference.stats.accepted_tokens
    assert recorder.chunks[0].generation_info["draft_lengths"] == [reference.stats.draft_lengths[0]]
    result = llm.generate([prompt])
    assert result.generations[0][0].text == reference.text
    assert result.llm_output["token_usage"]["output_tokens"] == reference.stats.new_tokens
    assert result.llm_output["diffuspec"][0]["accepted_tokens"] == reference.stats.accepted_lengths
    assert llm.invoke(prompt, stop=[reference.text[5:8]]) == reference.text[: reference.text.index(reference.text[5:8])]


def test_string_llm_custom_events_in_astream_events():
    llm = DiffuSpecLLM(max_tokens=24)

    async def collect():
        return [e async for e in llm.astream_events("import sys\n", version="v2")]

    events = asyncio.run(collect())
    custom = [e for e in events if e["event"] == "on_custom_event" and e["name"] == STEP_EVENT]
    streamed = [e for e in events if e["event"] == "on_llm_stream"]
    assert custom and len(custom) == len(streamed)
