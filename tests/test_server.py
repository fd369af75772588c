"""``diffuspec serve`` on the tiny preset, through the ``openai`` client and plain HTTP: answers equal the
engine's own (greedy), streams equal whole answers, concurrent clients never mix, bad requests get clear 4xx
errors while the server keeps serving, a client that leaves frees its slot, and /metrics adds up."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import httpx
import openai
import pytest
from live_server import WAIT, LiveServer

from diffuspec import DiffuSpec
from diffuspec.chat import format_chat
from diffuspec.server.app import EngineBackend

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Describe the os module."}]
PROMPT = "def read_lines(path):\n"
QUESTIONS = ["Describe the os module.", "Describe the json module.", "What does zip do?", "How do I sort a list?",
             "Describe the re module.", "What is a generator?", "Explain list comprehensions.", "What is pathlib?",
             "Describe the time module.", "How do I read a file?", "What is a dict?", "Describe the csv module.",
             "What does enumerate do?", "Explain decorators.", "What is a tuple?", "Describe the math module."]


@pytest.fixture(scope="module")
def engine():
    return DiffuSpec.from_pretrained("tiny", device="cpu", max_running=4)


@pytest.fixture(scope="module")
def server(engine):
    live = LiveServer(EngineBackend(engine), "tiny")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.openai_client()


def test_models_lists_the_served_model(client, engine):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"] and models[0].model_extra["max_model_len"] == engine.context_window


def test_the_served_name_is_the_presets_or_the_model_folders(tmp_path, monkeypatch):
    from diffuspec import presets
    from diffuspec.server.options import served_model_name

    monkeypatch.setattr(presets, "DEFAULT_PRESET", "gemma-3-270m")
    folder = tmp_path / "my-model"
    folder.mkdir()
    (tmp_path / "small.Q8_0.gguf").write_bytes(b"")
    assert served_model_name(None, None) == "gemma-3-270m"
    assert served_model_name(None, "tiny") == "tiny"
    assert served_model_name(None, str(folder) + "/") == "my-model"
    assert served_model_name(None, str(tmp_path / "small.Q8_0.gguf")) == "small.Q8_0"
    assert served_model_name(None, "google/gemma-3-270m-it") == "google/gemma-3-270m-it"  # a hub id, as given
    assert served_model_name("mine", "tiny") == "mine"


def test_chat_answer_is_the_engines_greedy_answer(client, engine):
    response = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, temperature=0)
    expected = engine.generate(format_chat(engine.tokenizer, MESSAGES), max_new_tokens=24)
    choice = response.choices[0]
    assert choice.message.content == expected.text and choice.message.role == "assistant"
    assert choice.finish_reason == {"eos": "stop", "length": "length"}[expected.finish_reason]
    prompt_tokens = len(format_chat(engine.tokenizer, MESSAGES))
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (prompt_tokens, len(expected.token_ids))
    stats = response.model_extra["diffuspec"]
    # the drafts may differ from the engine's own run: its cost policy starts each request where the last left it
    assert len(stats["accepted_lengths"]) == stats["steps"]
    assert sum(stats["accepted_lengths"]) == stats["accepted_tokens"]
    assert stats["steps"] <= len(expected.token_ids) <= stats["steps"] + stats["accepted_tokens"]  # a step: a + 1
    assert stats["mean_accepted_tokens"] == pytest.approx(sum(stats["accepted_lengths"]) / stats["steps"])
    assert stats["acceptance_rate"] == pytest.approx(stats["accepted_tokens"] / stats["drafted_tokens"])


def _streamed(stream) -> tuple[str, list]:
    chunks = list(stream)
    text = "".join((c.choices[0].delta.content if hasattr(c.choices[0], "delta") else c.choices[0].text) or ""
                   for c in chunks if c.choices)
    return text, chunks


def test_streamed_text_equals_the_whole_answer(client):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=32, temperature=0)
    text, chunks = _streamed(client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=32, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == whole.choices[0].finish_reason
    stats = finish[0].model_extra["diffuspec"]  # the stream's own steps (its drafts may differ from the first's)
    assert len(stats["accepted_lengths"]) == stats["steps"]
    assert stats["steps"] <= whole.usage.completion_tokens <= stats["steps"] + sum(stats["accepted_lengths"])
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices

    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=32, temperature=0)
    text, _ = _streamed(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=32, temperature=0,
                                                  stream=True))
    assert text == whole.choices[0].text and whole.object == "text_completion"


def test_completion_stop_seed_and_token_prompts(client, engine):
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0).choices[0].text
    stop = plain.strip()[3:6]
    cut = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop])
    assert cut.choices[0].text == plain[: plain.index(stop)] and cut.choices[0].finish_reason == "stop"
    sampled = [client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=1.0, top_p=0.9,
                                         seed=7).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1] == engine.generate(PROMPT, 20, temperature=1.0, top_p=0.9, seed=7).text
    ids = engine.tokenizer(PROMPT)["input_ids"]
    assert client.completions.create(model="tiny", prompt=ids, max_tokens=40, temperature=0).choices[0].text == plain


def test_sixteen_concurrent_clients_each_get_their_own_answer(server):
    """The engine decodes four at a time, a step each in turn; every answer equals the one its client gets
    alone."""
    async def ask(client, question):
        response = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0)
        return response.choices[0].message.content

    async def main():
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0,
                                      timeout=WAIT * 10) as client:
            together = await asyncio.gather(*(ask(client, q) for q in QUESTIONS))
            alone = [await ask(client, q) for q in QUESTIONS]
            return together, alone

    together, alone = asyncio.run(main())
    assert together == alone and len(set(alone)) > 1


@pytest.mark.parametrize(("body", "status", "param", "message"), [
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "must be a JSON object"),
    ({"model": "gpt-4o", "prompt": "x"}, 404, "model", "does not exist here"),
    ({"prompt": "x"}, 400, "model", "model is missing"),
    ({"model": "tiny", "prompt": "x " * 600}, 400, "prompt", "context window is 512"),
    ({"model": "tiny", "prompt": "x", "n": 2}, 400, "n", "n=2 is not supported"),
    ({"model": "tiny", "prompt": "x", "logprobs": 3}, 400, "logprobs", "not returned"),
    ({"model": "tiny", "prompt": "x", "presence_penalty": 0.5}, 400, "presence_penalty", "not supported"),
    ({"model": "tiny", "prompt": "x", "echo": True}, 400, "echo", "not echoed"),
    ({"model": "tiny", "prompt": "x", "frequency": 1}, 400, "frequency", "unknown field 'frequency'"),
    ({"model": "tiny", "prompt": "x", "temperature": -1}, 400, None, "temperature must be"),
    ({"model": "tiny", "prompt": "x", "max_tokens": "many"}, 400, "max_tokens", "must be an integer"),
    ({"model": "tiny", "prompt": ["a", "b"]}, 400, "prompt", "send one request per prompt"),
    ({"model": "tiny", "prompt": [10**9]}, 400, "prompt", "outside the model's vocabulary"),
])
def test_bad_completion_requests_get_clear_errors(server, body, status, param, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server.base_url}/completions", content=content,
                          headers={"content-type": "application/json"}, timeout=WAIT)
    error = response.json()["error"]
    assert response.status_code == status and message in error["message"] and error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("changes", "param", "message"), [
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": [{"role": "user", "content": "x " * 600}]}, "messages", "context window is 512"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]", "unknown chat role 'robot'"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content", "only text parts"),
    ({"messages": [{"role": "user", "content": "x", "mood": "happy"}]}, "messages[0]", "unknown field(s) mood"),
    ({"logprobs": True}, "logprobs", "not returned"),
    ({"n": 3}, "n", "n=3 is not supported"),
    ({"frequency_penalty": 0.5}, "frequency_penalty", "not supported"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls", "cannot be limited to one"),
    ({"tool_choice": "required"}, None, "needs tools"),
    ({"response_format": {"type": "xml"}}, None, "response_format"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens", "pass one"),
])
def test_bad_chat_requests_get_clear_errors(client, changes, param, message):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**{"model": "tiny", "messages": MESSAGES, "max_tokens": 4, **changes})
    error = caught.value.body
    assert message in error["message"] and error["param"] == param


def test_neutral_values_of_unsupported_fields_are_accepted(client):
    response = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, temperature=0, n=1,
                                              logprobs=False, presence_penalty=0, frequency_penalty=0.0, user="u1")
    assert response.choices[0].message.content is not None


def test_the_server_keeps_serving_after_errors(server, client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", max_tokens=2)
    too_big = httpx.post(f"{server.base_url}/completions", content=b"x" * (9 * 2**20), timeout=WAIT)
    assert too_big.status_code == 413 and "bytes" in too_big.json()["error"]["message"]
    assert httpx.get(f"{server.url}/v2/nothing").json()["error"]["message"].startswith("GET /v2/nothing")
    assert client.completions.create(model="tiny", prompt="x", max_tokens=2).choices[0].text is not None


class Held:
    """A request's decoding that never ends by itself: once the model has finished, it idles (empty steps)
    until its client leaves, so the slots stay taken whatever the model writes."""

    def __init__(self, decoding) -> None:
        self.decoding, self.last = decoding, None

    def step(self):
        if self.last is not None and self.last.finish_reason is not None:
            time.sleep(0.01)
            return replace(self.last, text="", token_ids=(), finish_reason=None)
        self.last = self.decoding.step()
        return replace(self.last, finish_reason=None)

    def close(self) -> None:
        self.decoding.close()


def _until(condition) -> bool:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_client_that_leaves_frees_its_slot_and_a_waiting_one_never_starts(server, engine, monkeypatch):
    started, start = [], engine._start
    monkeypatch.setattr(engine, "_start", lambda ids, params: started.append(ids) or Held(start(ids, params)))
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 64, "temperature": 0, "stream": True}
    with httpx.Client(base_url=server.base_url, timeout=WAIT) as http:
        busy = []
        for i in range(4):  # the four slots, taken
            response = http.send(http.build_request("POST", "/completions", json={**body, "seed": i}), stream=True)
            lines = response.iter_lines()
            while not next(lines).startswith("data: {"):  # its first step's chunk: it runs
                pass
            busy.append((response, lines))  # the line iterator too: dropping it would close the connection
        waiting = http.send(http.build_request("POST", "/completions", json={**body, "prompt": "import os\n"}),
                            stream=True)
        assert waiting.status_code == 200 and engine.scheduler.waiting == 1  # accepted and queued
        waiting.close()  # leaves before its turn
        assert _until(lambda: engine.scheduler.waiting == 0)  # out of the queue, every slot still taken
        assert engine.scheduler.running == 4
        for response, _ in busy:
            response.close()
    assert engine.scheduler.wait_idle(WAIT)  # every slot freed
    assert len(started) == 4 and engine.tokenizer("import os\n")["input_ids"] not in started
    assert _until(lambda: server.metric("diffuspec:num_requests_running") == 0)
    assert server.metric("diffuspec:num_requests_waiting") == 0
    assert server.metric("diffuspec:request_success_total", finished_reason="abort") >= 5


def test_metrics_count_what_responses_report(server, client):
    before = {name: server.metric(f"diffuspec:{name}_total") for name in
              ("spec_decode_num_drafts", "spec_decode_num_draft_tokens", "spec_decode_num_accepted_tokens",
               "generation_tokens", "prompt_tokens")}
    first = server.metric("diffuspec:spec_decode_num_accepted_tokens_per_pos_total", position="0")
    responses = [client.completions.create(model="tiny", prompt=p, max_tokens=24, temperature=0)
                 for p in (PROMPT, "class Stack:\n")]
    stats = [r.model_extra["diffuspec"] for r in responses]
    after = {name: server.metric(f"diffuspec:{name}_total") for name in before}
    assert after["spec_decode_num_drafts"] - before["spec_decode_num_drafts"] == sum(
        sum(d > 0 for d in s["draft_lengths"]) for s in stats)
    assert after["spec_decode_num_draft_tokens"] - before["spec_decode_num_draft_tokens"] == sum(
        s["drafted_tokens"] for s in stats)
    assert after["spec_decode_num_accepted_tokens"] - before["spec_decode_num_accepted_tokens"] == sum(
        s["accepted_tokens"] for s in stats)
    assert after["generation_tokens"] - before["generation_tokens"] == sum(r.usage.completion_tokens for r in responses)
    assert after["prompt_tokens"] - before["prompt_tokens"] == sum(r.usage.prompt_tokens for r in responses)
    assert server.metric("diffuspec:spec_decode_num_accepted_tokens_per_pos_total", position="0") - first == sum(
        sum(a > 0 for a in s["accepted_lengths"]) for s in stats)
    assert server.metric("diffuspec:e2e_request_latency_seconds_count") >= 2
    assert server.metric("diffuspec:request_success_total", finished_reason="length") >= 1
