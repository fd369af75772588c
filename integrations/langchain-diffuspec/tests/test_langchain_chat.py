"""ChatDiffuSpec against the real engine on the embedded demo pair (and, for tool calls and structured output,
which the demo model does not write, fed scripted engine events beside a real-engine test of the plumbing)."""

import asyncio
import threading

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_diffuspec import STEP_EVENT, ChatDiffuSpec
from langchain_diffuspec.chat_models import to_chat_dicts
from pydantic import BaseModel
from pydantic.v1 import BaseModel as BaseModelV1

from diffuspec import DiffuSpecError
from diffuspec.chat import forced_call_prefix, format_chat

MESSAGES = [SystemMessage("You write Python."), HumanMessage("def parse_args(argv):")]
N = 48


@pytest.fixture(scope="module")
def chat():
    return ChatDiffuSpec(max_tokens=N)


@pytest.fixture(scope="module")
def engine(chat):
    return chat.get_engine()


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def negate(x: int) -> int:
    """Negate an integer."""
    return -x


class Point(BaseModel):
    """A point in the plane."""

    x: int
    y: int


class PointV1(BaseModelV1):
    """A point in the plane (pydantic v1)."""

    x: int
    y: int


def _merged(chunks):
    return sum(chunks[1:], chunks[0])


class StepRecorder(BaseCallbackHandler):
    def __init__(self):
        self.tokens, self.steps = [], []

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)

    def on_custom_event(self, name, data, **kwargs):
        if name == STEP_EVENT:
            self.steps.append(data)


def test_invoke_equals_stream_and_engine(chat, engine):
    message = chat.invoke(MESSAGES)
    merged = _merged(list(chat.stream(MESSAGES)))
    prompt = format_chat(engine.tokenizer, to_chat_dicts(MESSAGES))
    reference = engine.generate(prompt, N)
    assert message.content == merged.content == reference.text  # lossless, and the prompt is never echoed
    for meta in (message.response_metadata, merged.response_metadata):
        steps = meta["verification_steps"]
        assert len(meta["accepted_tokens"]) == len(meta["draft_lengths"]) == steps
        assert sum(meta["accepted_tokens"]) / steps == pytest.approx(meta["mean_accepted_tokens"])
        assert meta["model_name"] == "tiny"  # the default preset's name (tiny in the fast tests)
    for usage in (message.usage_metadata, merged.usage_metadata):
        assert usage == {"input_tokens": len(prompt), "output_tokens": len(reference.token_ids),
                         "total_tokens": len(prompt) + len(reference.token_ids)}


def test_stop_in_call_and_constructor(chat):
    full = chat.invoke(MESSAGES).content
    stop = full[10:14]
    expected = full[: full.index(stop)]
    assert chat.invoke(MESSAGES, stop=[stop]).content == expected
    assert ChatDiffuSpec(max_tokens=N, stop=[stop]).invoke(MESSAGES).content == expected
    assert "".join(c.content for c in chat.stream(MESSAGES, stop=[stop])) == expected


def test_messages_of_every_kind_reach_the_template(engine):
    messages = [
        SystemMessage("sys"), ChatMessage(role="developer", content="dev"), HumanMessage("hi"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1}, "id": "c1"}]),
        ToolMessage("2", tool_call_id="c1", name="add"), ChatMessage(role="model", content="ok"),
    ]
    dicts = to_chat_dicts(messages)
    assert [d["role"] for d in dicts] == ["system", "system", "user", "assistant", "tool", "assistant"]
    tokenizer = engine.tokenizer.__class__.from_pretrained(engine.tokenizer.name_or_path)
    tokenizer.chat_template = None  # the documented fallback format
    text = tokenizer.decode(format_chat(tokenizer, dicts))
    assert "### Tool (add):\n2" in text and '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>' in text
    assert text.endswith("### Assistant:\n")
    with pytest.raises(DiffuSpecError, match="unknown chat role 'narrator'"):
        to_chat_dicts([ChatMessage(role="narrator", content="x")])


def test_step_events_in_invoke_stream_and_astream_events(chat):
    recorder = StepRecorder()
    message = chat.invoke(MESSAGES, config={"callbacks": [recorder]})
    assert len(recorder.steps) == message.response_metadata["verification_steps"] == len(recorder.tokens)
    recorder = StepRecorder()
    chunks = list(chat.stream(MESSAGES, config={"callbacks": [recorder]}))
    assert len(recorder.steps) == _merged(chunks).response_metadata["verification_steps"]
    assert sum(s["accepted_tokens"] for s in recorder.steps) == sum(_merged(chunks).response_metadata["accepted_tokens"])

    async def collect():
        return [e async for e in chat.astream_events(MESSAGES, version="v2")]

    events = asyncio.run(collect())
    custom = [e for e in events if e["event"] == "on_custom_event" and e["name"] == STEP_EVENT]
    streamed = [e for e in events if e["event"] == "on_chat_model_stream"]
    start = next(e for e in events if e["event"] == "on_chat_model_start")
    assert custom and len(custom) == len(streamed)
    assert {e["run_id"] for e in custom} == {start["run_id"]}  # attributed to the chat model's run


def test_async_does_not_block_the_event_loop(chat, run_while_ticking):
    message, ticks = run_while_ticking(lambda: chat.ainvoke(MESSAGES))
    assert message.content == chat.invoke(MESSAGES).content
    assert ticks >= 3  # the loop kept running while the engine worked


def test_abandoned_async_stream_frees_the_engine(engine):
    long_chat = ChatDiffuSpec(max_tokens=400)

    async def first_chunk():
        async for chunk in long_chat.astream(MESSAGES):
            return chunk

    assert asyncio.run(first_chunk()) is not None
    assert engine.scheduler.wait_idle(30)  # the request was withdrawn, its slot freed


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


def test_per_call_errors_reach_the_caller(chat):
    for call in (lambda: chat.invoke(MESSAGES, max_tokens=0), lambda: asyncio.run(chat.ainvoke(MESSAGES, top_p=2))):
        with pytest.raises(DiffuSpecError, match="max_new_tokens|top_p"):
            call()
    with pytest.raises(DiffuSpecError, match="unknown argument.*repetition_penalty"):
        chat.invoke(MESSAGES, repetition_penalty=1.1)
    with pytest.raises(DiffuSpecError, match="unknown argument.*model"):
        list(chat.stream(MESSAGES, model="other"))
    short, longer = chat.invoke(MESSAGES, max_new_tokens=3).content, chat.invoke(MESSAGES, max_tokens=12).content
    assert longer.startswith(short) and len(short) < len(longer)


def test_token_counts_use_the_engines_tokenizer(chat, engine):
    text = "def parse_args(argv):\n    return argv"
    assert chat.get_token_ids(text) == engine.tokenizer.encode(text, add_special_tokens=False)
    assert chat.get_num_tokens(text) == len(engine.tokenizer.encode(text, add_special_tokens=False))
    tools = [convert_to_openai_tool(add)]
    expected = format_chat(engine.tokenizer, to_chat_dicts(MESSAGES), tools)
    assert chat.get_num_tokens_from_messages(MESSAGES, tools=[add]) == len(expected)
    assert ChatDiffuSpec(custom_get_token_ids=lambda t: [7] * len(t)).get_num_tokens("abc") == 3


# ----- tools: scripted answers (the wrapper alone), then the real engine's plumbing ---------------------------

@pytest.fixture
def scripted(engine, scripted_engine):
    """A ChatDiffuSpec on a ScriptedEngine answering ``texts`` (one per step), and that engine."""

    def make(*texts):
        fake = scripted_engine(engine.tokenizer, list(texts))
        return fake, ChatDiffuSpec(engine=fake)

    return make


def offers_add(prompt: str) -> bool:
    return "Add two integers." in prompt  # the tool's description, listed by the template or the fallback


def test_tool_calls_are_parsed_from_the_stream(scripted):
    _, chat = scripted("Let me add. <to", 'ol_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool', "_call>")
    chunks = list(chat.bind_tools([add]).stream("2 + 3?"))
    assert [c.content for c in chunks] == ["Let me add. ", "", ""]  # the tag prefix is held back
    merged = _merged(chunks)
    assert merged.tool_calls[0]["name"] == "add" and merged.tool_calls[0]["args"] == {"a": 1, "b": 2}
    assert merged.response_metadata["finish_reason"] == "tool_calls" and not merged.invalid_tool_calls
    message = chat.bind_tools([add]).invoke("2 + 3?")
    assert message.content == "Let me add. " and message.tool_calls[0]["args"] == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    ("answer", "choice", "error"),
    [
        ('<tool_call>{"name": "add", "arguments": {"a": 1,}}</tool_call>', None, "not valid JSON"),
        ('<tool_call>{"arguments": {"a": 1}}</tool_call>', None, 'no "name"'),
        ('<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>', None, "not a JSON object"),
        ('<tool_call>{"name": "mul", "arguments": {}}</tool_call>', None, "no tool named 'mul'"),
        ('<tool_call>{"name": "add", "arguments": {"a": 1', None, "ended inside"),
    ],
)
def test_malformed_tool_calls_go_to_invalid_tool_calls(scripted, answer, choice, error):
    _, chat = scripted(answer)
    bound = chat.bind_tools([add, negate], tool_choice=choice)
    message = bound.invoke("2 + 3?")
    assert not message.tool_calls
    bad = message.invalid_tool_calls[0]
    assert error in bad["error"] and bad["args"].startswith("<tool_call>") and bad["type"] == "invalid_tool_call"
    merged = _merged(list(bound.stream("2 + 3?")))  # chunks cannot carry the error text: it is in the metadata
    assert not merged.tool_calls and merged.invalid_tool_calls[0]["args"] == bad["args"]
    assert any(error in e for e in merged.response_metadata["tool_call_errors"])


@pytest.mark.parametrize(("choice", "line", "prefix", "rest"), [
    ("required", "You must call a tool.", '<tool_call>{"name": "', 'add", "arguments": {"a": 2, "b": 3}}</tool_call>'),
    ("any", "You must call a tool.", '<tool_call>{"name": "', 'add", "arguments": {"a": 2, "b": 3}}</tool_call>'),
    ("add", "You must call the add tool.", '<tool_call>{"name": "add", "arguments": ', '{"a": 2, "b": 3}}</tool_call>'),
    ({"type": "function", "function": {"name": "add"}}, "You must call the add tool.",
     '<tool_call>{"name": "add", "arguments": ', '{"a": 2, "b": 3}}</tool_call>'),
])
def test_forcing_tool_choice_opens_the_call_in_the_prompt(engine, scripted, choice, line, prefix, rest):
    fake, chat = scripted(rest)
    message = chat.bind_tools([add, negate], tool_choice=choice).invoke("2 + 3?")
    prompt = engine.tokenizer.decode(fake.prompts[-1][0])
    assert line in prompt and prompt.endswith(prefix)
    assert message.tool_calls[0]["name"] == "add" and message.tool_calls[0]["args"] == {"a": 2, "b": 3}
    assert message.content == "" and not message.invalid_tool_calls


def test_a_call_to_another_tool_than_the_forced_one_is_invalid(scripted):
    _, chat = scripted('{"a": 1, "b": 2}}</tool_call><tool_call>{"name": "negate", "arguments": {"x": 1}}</tool_call>')
    message = chat.bind_tools([add, negate], tool_choice="add").invoke("2 + 3?")
    assert [c["name"] for c in message.tool_calls] == ["add"]
    assert "asks for 'add', not 'negate'" in message.invalid_tool_calls[0]["error"]


@pytest.mark.parametrize("choice", ["required", "add"])
def test_a_forced_call_left_unfinished_is_reported(scripted, choice):
    _, chat = scripted("It is 5.")
    message = chat.bind_tools([add, negate], tool_choice=choice).invoke("2 + 3?")
    assert not message.tool_calls
    errors = [c["error"] for c in message.invalid_tool_calls]
    assert any("ended inside" in e for e in errors) and any("but the answer has no valid" in e for e in errors)
    assert "tool_call_errors" in message.response_metadata


def test_tool_choice_none_and_auto(engine, scripted):
    call = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    fake, chat = scripted(call)
    message = chat.bind_tools([add], tool_choice="none").invoke("2 + 3?")
    assert not offers_add(engine.tokenizer.decode(fake.prompts[-1][0]))  # not offered, not read
    assert message.content == call and not message.tool_calls and not message.invalid_tool_calls
    message = chat.bind_tools([add], tool_choice="auto").invoke("2 + 3?")
    prompt = engine.tokenizer.decode(fake.prompts[-1][0])
    assert offers_add(prompt) and "You must" not in prompt and message.tool_calls[0]["args"] == {"a": 1, "b": 2}


def test_bad_tool_choice_is_refused_when_binding(chat):
    with pytest.raises(DiffuSpecError, match="tool_choice 'mul' is not understood.*add"):
        chat.bind_tools([add], tool_choice="mul")
    with pytest.raises(DiffuSpecError, match="unknown argument.*parallel"):
        chat.bind_tools([add], parallel_tool_calls=False)


def test_bind_tools_plumbing_on_the_real_engine(chat, engine):
    message = chat.bind_tools([add], tool_choice="required").invoke([HumanMessage("2 + 3?")])
    prompt = format_chat(engine.tokenizer, [{"role": "user", "content": "2 + 3?"}], [convert_to_openai_tool(add)],
                         "required", answer_prefix=forced_call_prefix("required"))
    assert message.usage_metadata["input_tokens"] == len(prompt)
    assert offers_add(engine.tokenizer.decode(prompt))
    # Whatever the model writes after the opened call, an unmet choice is reported, never passed silently.
    assert message.tool_calls or "tool_choice='required'" in message.invalid_tool_calls[-1]["error"]


# ----- structured output ---------------------------------------------------------------------------------

def test_structured_output_through_a_tool_call(scripted):
    _, chat = scripted('{"x": 1, "y": 2}}</tool_call>')  # after the forced call's opening, in the prompt
    assert chat.with_structured_output(Point).invoke("a point") == Point(x=1, y=2)
    assert chat.with_structured_output(Point.model_json_schema()).invoke("a point") == {"x": 1, "y": 2}


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_structured_output_in_a_pydantic_v1_class_is_an_instance(scripted, method):
    answer = '{"x": 5, "y": 6}}</tool_call>' if method == "function_calling" else '{"x": 5, "y": 6}'
    _, chat = scripted(answer)
    parsed = chat.with_structured_output(PointV1, method=method).invoke("a point")
    assert isinstance(parsed, PointV1) and (parsed.x, parsed.y) == (5, 6)
    _, chat = scripted(answer.replace("5", '"far"'))
    with pytest.raises(OutputParserException, match="does not fit PointV1"):
        chat.with_structured_output(PointV1, method=method).invoke("a point")


@pytest.mark.parametrize("method", ["json_schema", "json_mode"])
def test_structured_output_through_json(engine, scripted, method):
    fake, chat = scripted('Here: ```json\n{"x": 3, "y": 4}\n```')
    assert chat.with_structured_output(Point, method=method).invoke("a point") == Point(x=3, y=4)
    prompt = engine.tokenizer.decode(fake.prompts[-1][0])
    assert "Answer with one JSON object" in prompt and ('"x"' in prompt) == (method == "json_schema")


@pytest.mark.parametrize(("answer", "method"), [("no call", "function_calling"), ('{"x": "far"}', "json_mode"),
                                                ("not json", "json_schema")])
def test_structured_output_failures_are_visible(scripted, answer, method):
    _, chat = scripted(answer)
    with pytest.raises(OutputParserException):
        chat.with_structured_output(Point, method=method).invoke("a point")
    result = chat.with_structured_output(Point, method=method, include_raw=True).invoke("a point")
    assert result["parsed"] is None and isinstance(result["parsing_error"], OutputParserException)
    raw = result["raw"]  # a forced call's unfinished block keeps what the model wrote
    assert answer in (raw.invalid_tool_calls[0]["args"] if method == "function_calling" else raw.content)


def test_structured_output_on_the_real_engine(chat):
    result = chat.with_structured_output(Point, include_raw=True).invoke("a point")
    assert isinstance(result["raw"], AIMessage)
    assert isinstance(result["parsed"], Point) or isinstance(result["parsing_error"], OutputParserException)
