"""DiffuSpecLLM (LangChain's string LLM) against the real engine on the embedded demo pair."""

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_diffuspec import STEP_EVENT, DiffuSpecLLM

from diffuspec import DiffuSpecError

N = 48
PROMPT = "def fib(n):\n"


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


@pytest.fixture(scope="module")
def llm():
    return DiffuSpecLLM(max_tokens=N)


def test_callbacks_events_and_llm_output(llm):
    engine = llm.get_engine()
    reference = engine.generate(PROMPT, N)
    recorder = Recorder()
    streamed = "".join(llm.stream(PROMPT, config={"callbacks": [recorder]}))
    assert streamed == reference.text == "".join(recorder.tokens)
    infos = [c.generation_info for c in recorder.chunks]
    assert len(recorder.custom) == len(recorder.chunks) == infos[-1]["verification_steps"]
    assert [e["accepted_tokens"] for e in recorder.custom] == [i["accepted_tokens"][0] for i in infos]
    result = llm.generate([PROMPT])
    assert result.generations[0][0].text == reference.text
    assert result.llm_output["token_usage"]["output_tokens"] == len(reference.token_ids)
    stats = result.llm_output["diffuspec"][0]
    assert len(stats["accepted_tokens"]) == stats["verification_steps"]
    stop = reference.text[5:8]
    assert llm.invoke(PROMPT, stop=[stop]) == reference.text[: reference.text.index(stop)]


def test_custom_events_in_astream_events():
    llm = DiffuSpecLLM(max_tokens=24)

    async def collect():
        return [e async for e in llm.astream_events("import sys\n", version="v2")]

    events = asyncio.run(collect())
    custom = [e for e in events if e["event"] == "on_custom_event" and e["name"] == STEP_EVENT]
    streamed = [e for e in events if e["event"] == "on_llm_stream"]
    assert custom and len(custom) == len(streamed)


def test_per_call_arguments(llm):
    assert llm.invoke(PROMPT, max_new_tokens=4) == llm.get_engine().generate(PROMPT, 4).text
    assert llm.invoke(PROMPT, max_tokens=4, mode="ar") == llm.get_engine().generate(PROMPT, 4).text
    with pytest.raises(DiffuSpecError, match="unknown argument.*repetition_penalty"):
        llm.invoke(PROMPT, repetition_penalty=1.2)
    with pytest.raises(DiffuSpecError, match="temperature"):
        asyncio.run(llm.ainvoke(PROMPT, temperature=-1))


def test_token_counts_use_the_engines_tokenizer(llm):
    text = "import os\nprint(os.getcwd())"
    assert llm.get_num_tokens(text) == len(llm.get_engine().tokenizer.encode(text, add_special_tokens=False))
