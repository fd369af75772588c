"""LlamaIndex LLM against the real engine on the embedded demo pair."""

import pytest
from conftest import run_while_ticking
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.llms.diffuspec import DiffuSpecLLM, DiffuSpecStepEvent

from diffuspec.chat import format_chat

N = 40
PROMPT = "def read_lines(path):\n"


class StepCollector(BaseEventHandler):
    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "StepCollector"

    def handle(self, event, **kwargs):
        if isinstance(event, DiffuSpecStepEvent):
            self.events.append(event)


@pytest.fixture(scope="module")
def llm():
    return DiffuSpecLLM(max_new_tokens=N)


@pytest.fixture()
def collector():
    handler = StepCollector(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


def test_metadata_without_loading_weights():
    fresh = DiffuSpecLLM()
    meta = fresh.metadata
    assert meta.context_window == 512 and meta.is_chat_model and meta.num_output == 256
    assert fresh._engine is None


def test_complete_and_stream_agree_with_engine(llm, collector):
    engine = llm.get_engine()
    reference = engine.generate(PROMPT, N)
    response = llm.complete(PROMPT)
    assert response.text == reference.text
    assert response.additional_kwargs["stats"]["accepted_tokens"] == reference.stats.accepted_tokens
    collector.events.clear()
    chunks = list(llm.stream_complete(PROMPT))
    assert chunks[-1].text == reference.text == "".join(c.delta for c in chunks)
    assert [c.additional_kwargs["accepted_tokens"] for c in chunks] == reference.stats.accepted_lengths
    assert len(collector.events) == reference.stats.steps
    assert sum(e.accepted_tokens for e in collector.events) == reference.stats.accepted_tokens
    assert all(e.span_id is not None for e in collector.events)  # attached to the stream_complete span


def test_chat_uses_the_chat_template_in_both_paths(llm):
    engine = llm.get_engine()
    messages = [ChatMessage(role=MessageRole.SYSTEM, content="Python"), ChatMessage(role=MessageRole.USER, content="import")]
    prompt = format_chat(engine.tokenizer, [{"role": "system", "content": "Python"}, {"role": "user", "content": "import"}])
    reference = engine.generate(prompt, N)
    assert llm.chat(messages).message.content == reference.text
    assert list(llm.stream_chat(messages))[-1].message.content == reference.text


def test_async_paths_do_not_block(llm):
    async def both():
        done = await llm.acomplete(PROMPT)
        return done, [c async for c in await llm.astream_complete(PROMPT)]

    (done, chunks), ticks = run_while_ticking(both)
    assert done.text == chunks[-1].text == llm.complete(PROMPT).text
    assert ticks >= 3


def test_completion_to_prompt_applies_to_streaming_too():
    wrapped = DiffuSpecLLM(max_new_tokens=16, completion_to_prompt=lambda p: f"# task\n{p}")
    assert wrapped.complete(PROMPT).text == list(wrapped.stream_complete(PROMPT))[-1].text
    assert wrapped.complete(PROMPT).text == wrapped.get_engine().generate(f"# task\n{PROMPT}", 16).text
