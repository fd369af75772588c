"""LlamaIndex LLM against the real engine on the embedded demo pair."""

import asyncio

import pytest
import torch
import transformers
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.llms.diffuspec import DiffuSpecLLM, DiffuSpecStepEvent

from diffuspec import DiffuSpecError
from diffuspec.chat import format_chat
from diffuspec.loading import embedded_paths

N = 40
PROMPT = "def read_lines(path):\n"


class StepCollector(BaseEventHandler):
    events: list = Field(default_factory=list)

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


def test_metadata_is_honest_without_loading_weights():
    fresh = DiffuSpecLLM()
    meta = fresh.metadata
    assert meta.context_window == 512  # the demo target's window, read from its config
    assert meta.num_output == 128  # the default answer length: a quarter of the window
    assert fresh._loaded is None
    # A chat model when the tokenizer has a chat template; without one LlamaIndex sends completions.
    assert meta.is_chat_model == bool(fresh.get_engine().tokenizer.chat_template)
    tuned = DiffuSpecLLM(max_new_tokens=64, context_window=400, is_chat_model=True).metadata
    assert (tuned.context_window, tuned.num_output, tuned.is_chat_model) == (400, 64, True)
    assert DiffuSpecLLM(num_output=32).metadata.num_output == 32


def test_default_answer_length_follows_the_window(llm):
    response = DiffuSpecLLM().complete("x = [")
    assert response.additional_kwargs["stats"]["new_tokens"] <= 128
    assert llm.metadata.num_output == N


def test_complete_and_stream_agree_with_engine(llm, collector):
    engine = llm.get_engine()
    reference = engine.generate(PROMPT, N)
    response = llm.complete(PROMPT)
    assert response.text == reference.text
    stats = response.additional_kwargs["stats"]
    assert stats["new_tokens"] == len(reference.token_ids)
    collector.events.clear()
    chunks = list(llm.stream_complete(PROMPT))
    assert chunks[-1].text == reference.text == "".join(c.delta for c in chunks)
    assert len(collector.events) == len(chunks) == chunks[-1].additional_kwargs["stats"]["steps"]
    assert [e.accepted_tokens for e in collector.events] == [c.additional_kwargs["accepted_tokens"] for c in chunks]
    assert all(e.span_id is not None for e in collector.events)  # attached to the stream_complete span


def test_chat_uses_the_chat_template_in_both_paths(llm):
    engine = llm.get_engine()
    messages = [ChatMessage(role=MessageRole.SYSTEM, content="Python"), ChatMessage(role=MessageRole.USER, content="import")]
    prompt = format_chat(engine.tokenizer, [{"role": "system", "content": "Python"}, {"role": "user", "content": "import"}])
    reference = engine.generate(prompt, N)
    assert llm.chat(messages).message.content == reference.text
    assert list(llm.stream_chat(messages))[-1].message.content == reference.text


def test_every_llamaindex_role_is_mapped(llm):
    roles = [MessageRole.DEVELOPER, MessageRole.USER, MessageRole.CHATBOT, MessageRole.USER, MessageRole.MODEL,
             MessageRole.FUNCTION, MessageRole.TOOL]
    messages = [ChatMessage(role=role, content=f"m{i}") for i, role in enumerate(roles)]
    canonical = ["system", "user", "assistant", "user", "assistant", "tool", "tool"]
    tokenizer = llm.get_engine().tokenizer
    expected = format_chat(tokenizer, [{"role": r, "content": f"m{i}"} for i, r in enumerate(canonical)])
    assert llm._chat_ids(messages) == expected
    assert llm.chat(messages, max_new_tokens=4).message.content == llm.get_engine().generate(expected, 4).text


def test_astream_chat_step_events_carry_the_span_id(llm, collector):
    messages = [ChatMessage(role=MessageRole.USER, content="import")]

    async def stream():
        return [r async for r in await llm.astream_chat(messages)]

    collector.events.clear()
    chunks = asyncio.run(stream())
    assert chunks[-1].message.content == llm.chat(messages).message.content
    streamed = collector.events[: len(chunks)]
    assert len(streamed) == len(chunks) and all(e.span_id is not None for e in streamed)


def test_async_paths_do_not_block(llm, run_while_ticking):
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


def test_per_call_overrides_are_checked(llm):
    engine = llm.get_engine()
    assert llm.complete(PROMPT, max_new_tokens=5, mode="ar").text == engine.generate(PROMPT, 5).text
    assert llm.complete(PROMPT, max_tokens=5).text == engine.generate(PROMPT, 5).text
    for call in (lambda: llm.complete(PROMPT, repetition_penalty=1.1), lambda: llm.stream_complete(PROMPT, top_k=0),
                 lambda: llm.chat([ChatMessage(role="user", content="x")], temperature=-1)):
        with pytest.raises(DiffuSpecError, match="repetition_penalty|top_k|temperature"):
            call()
    with pytest.raises(DiffuSpecError, match="unknown argument"):
        asyncio.run(llm.acomplete(PROMPT, do_sample=True))


def test_openai_and_hugging_face_spellings_are_one_argument():
    """max_tokens/max_new_tokens, stop/stop_sequences and seed, in the constructor and per call."""
    hf = DiffuSpecLLM(max_new_tokens=7, stop_sequences=["\n"], seed=5, temperature=0.8)
    openai = DiffuSpecLLM(max_tokens=7, stop=["\n"], seed=5, temperature=0.8)
    assert hf.generation_params() == openai.generation_params()
    assert (hf.generation_params().max_new_tokens, hf.generation_params().stop) == (7, ("\n",))
    assert hf.generation_params(max_tokens=3, stop_sequences=["x"], seed=1) == \
        hf.generation_params(max_new_tokens=3, stop=["x"], seed=1)
    with pytest.raises(DiffuSpecError, match="one argument"):
        DiffuSpecLLM(max_tokens=3, max_new_tokens=3)
    with pytest.raises(DiffuSpecError, match="unknown argument.*stop_words"):
        hf.complete(PROMPT, stop_words=["x"])
    assert hf.complete(PROMPT, stop_sequences=["("]).text == openai.complete(PROMPT, stop=["("]).text


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"api_key": "x"}, "unknown argument.*api_key"),
        ({"generate_kwargs": {}}, "unknown argument.*generate_kwargs"),
        ({"model_name": "Qwen/Qwen2.5-0.5B-Instruct"}, "only names the model"),
        ({"model_kwargs": {"attn_implementation": "sdpa"}}, r"model_kwargs\['attn_implementation'\] is not supported"),
        ({"target": "a", "model_id": "b"}, "one argument"),
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
        ({"temperature": "hot"}, "temperature must be"),
        ({"mode": "turbo"}, "mode 'turbo' is unknown"),
        ({"engine_config": {"beam": 2}}, "engine_config got unknown argument"),
    ],
)
def test_bad_constructor_arguments_are_refused(kwargs, error):
    with pytest.raises(DiffuSpecError, match=error):
        DiffuSpecLLM(**kwargs)


def test_hugging_face_spellings_and_modes(monkeypatch):
    loads = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(path, **kwargs):
        loads.append(kwargs)
        return real(path, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    paths = embedded_paths()
    llm = DiffuSpecLLM(model_id=paths["target"], drafter=paths["drafter"], ar_drafter=paths["ar_drafter"],
                       model_kwargs={"dtype": "bfloat16", "device_map": "cpu"}, trust_remote_code=False,
                       mode="ar-drafter", model_name="demo-bf16", max_new_tokens=8)
    engine = llm.get_engine()
    assert [(k["dtype"], k["device_map"], k["trust_remote_code"]) for k in loads] == [(torch.bfloat16, "cpu", False)] * 3
    assert engine.target.dtype == torch.bfloat16 and llm.metadata.model_name == "demo-bf16"
    assert llm.complete(PROMPT).text == engine.generate(PROMPT, 8, mode="ar-drafter").text


def test_settings_tokenizer_counts_the_engines_tokens(llm):
    text = "def read_lines(path):\n    with open(path) as f:"
    assert llm.tokenizer(text) == llm.get_engine().tokenizer.encode(text, add_special_tokens=False)
