"""A live diffuspec server on 127.0.0.1 for tests with real HTTP clients: uvicorn in a thread of the test process
(``LiveServer``), on the real engine or on a ``ScriptedBackend`` that answers given texts (the tiny model
cannot write tool calls; protocol tests need answers that hold them)."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator

import httpx
import uvicorn

from diffuspec.events import StepEvent
from diffuspec.server.app import create_app
from diffuspec.server.single import bound_socket
from diffuspec.stats import DecodingStats

WAIT = 60  # seconds: a bound for a hang, never a timing


class LiveServer:
    def __init__(self, backend, name: str, **options) -> None:
        self.app = create_app(backend, name, **options)
        self.backend, self.name = backend, name
        listener = bound_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        self.base_url = f"{self.url}/v1"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listener]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + WAIT
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)

    def metric(self, name: str, **labels: str) -> float:
        """A metric's value from /metrics (0 when it has no sample yet)."""
        wanted = {"model_name": self.name, **labels}
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(name + "{"):
                series, value = line.rsplit(" ", 1)
                found = dict(item.split("=", 1) for item in series[len(name) + 1 : -1].split(","))
                if {k: v.strip('"') for k, v in found.items()} == wanted:
                    return float(value)
        return 0.0

    def openai_client(self):
        """An ``openai`` client of this server (no retries: a failure shows at once)."""
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key="none", max_retries=0, timeout=WAIT * 5)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT)


class ScriptedHandle:
    def __init__(self, pieces: list[str], tokenizer) -> None:
        self.pieces, self.tokenizer, self.cancelled = pieces, tokenizer, False
        self.queue_seconds = 0.0

    async def __aiter__(self) -> AsyncIterator[StepEvent]:
        new = 0
        for i, piece in enumerate(self.pieces):
            ids = tuple(self.tokenizer.encode(piece, add_special_tokens=False))
            new += len(ids)
            stats = DecodingStats(steps=i + 1, new_tokens=new, drafted_tokens=4 * (i + 1), accepted_tokens=2 * (i + 1),
                                  draft_lengths=(4,) * (i + 1), accepted_lengths=(2,) * (i + 1))
            yield StepEvent(piece, ids, 4, 2, stats, "eos" if i == len(self.pieces) - 1 else None)

    def cancel(self) -> None:
        self.cancelled = True


class ScriptedBackend:
    """Answers request i with ``answers[i]`` (a list of step texts; the last answer repeats); records each
    request's prompt text and params."""

    def __init__(self, tokenizer, answers: list[list[str]], context_window: int = 512) -> None:
        self.tokenizer, self.answers, self.context_window = tokenizer, answers, context_window
        self.vocab_size = len(tokenizer)
        self.requests: list[tuple[str, object]] = []

    def submit(self, prompt_ids, params) -> ScriptedHandle:
        self.requests.append((self.tokenizer.decode(prompt_ids), params))
        return ScriptedHandle(self.answers[min(len(self.requests), len(self.answers)) - 1], self.tokenizer)

    async def close(self, grace_seconds: float) -> None:
        pass
