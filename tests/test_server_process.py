"""``diffuspec serve`` as its own process: SIGTERM drains and stops it; (slow) 200 requests with random
disconnects lose nothing and leave its memory flat; (slow) two Ray Serve replicas behind one endpoint."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

WAIT = 300  # seconds: a bound for a hang (a cold start on a busy machine), never a timing
PROMPTS = ["def read_lines(path):\n", "class Stack:\n", "import os\n", "for i in range(", "x = [", "# Sort a list\n"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*options: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "diffuspec", "serve", "--target", "tiny", "--device", "cpu",
                                "--port", str(port), *options], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the server did not start")


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def metric(url: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_sigterm_drains_and_stops():
    process, url = start_server("--shutdown-grace", "2")
    try:
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["tiny"]  # the preset's name
        other = httpx.post(f"{url}/v1/completions", json={"model": "gpt-4o", "prompt": "x"})
        assert other.status_code == 404 and "serves 'tiny'" in other.json()["error"]["message"]
        body = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 400, "temperature": 0, "stream": True}
        with httpx.Client(timeout=WAIT) as http, http.stream("POST", f"{url}/v1/completions", json=body) as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))  # generating
            process.send_signal(signal.SIGTERM)
            told = time.monotonic()
            rest = list(lines)  # the stream ends: finished within the grace, or cut after it
        assert process.wait(timeout=WAIT) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        assert time.monotonic() - told < 2 + 20  # the grace, then seconds (a bound for a busy machine)
        assert "data: [DONE]" in rest  # finished within the grace, or cut after it with an error event: whole
        errors = [event["error"] for event in map(json.loads, (line[6:] for line in rest if line.startswith("data: {")))
                  if "error" in event]  # an error event, not generated text that says "error"
        assert all("shut down" in error["message"] for error in errors), errors
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=5)
    finally:
        if process.poll() is None:
            process.kill()


async def _one(client: httpx.AsyncClient, url: str, prompt: str, leave: str) -> str | None:
    """A streamed greedy completion; ``leave``: "never", "early" (after the headers) or "mid" (after a chunk)."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 48, "temperature": 0, "stream": True}
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        assert response.status_code == 200
        if leave == "early":
            return None
        text, done = [], False
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: {"):
                chunk = json.loads(line[6:])
                text += [c["text"] for c in chunk["choices"]]
                if leave == "mid":
                    return None
        assert done
        return "".join(text)


@pytest.mark.slow
def test_two_hundred_requests_with_random_disconnects_lose_nothing_and_memory_stays_flat():
    process, url = start_server("--max-running", "4")
    try:
        rng = random.Random(0)
        plan = [(rng.choice(PROMPTS), rng.choice(["never", "early", "mid"])) for _ in range(250)]

        async def run(batch):
            async with httpx.AsyncClient(timeout=WAIT) as client:
                queue = list(batch)
                answers = []

                async def worker():
                    while queue:
                        prompt, leave = queue.pop()
                        answers.append((prompt, await _one(client, url, prompt, leave)))

                await asyncio.gather(*(worker() for _ in range(8)))
                return answers

        warm = asyncio.run(run(plan[:50]))  # caches, allocator pools and histograms warm up first
        before = rss_kib(process.pid)
        answers = warm + asyncio.run(run(plan[50:]))
        after = rss_kib(process.pid)
        reference = {}
        for prompt, text in answers:
            if text is not None:
                assert reference.setdefault(prompt, text) == text  # every finished answer whole and the same
        deadline = time.monotonic() + WAIT
        while metric(url, "diffuspec:num_requests_running") + metric(url, "diffuspec:num_requests_waiting"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert metric(url, "diffuspec:request_success_total") == len(plan)  # every request accounted for
        assert metric(url, "diffuspec:request_success_total", finished_reason="abort") >= sum(
            leave != "never" for _, leave in plan) - 10  # a few finish before their client leaves
        assert after - before < 64 * 1024, f"RSS grew by {(after - before) / 1024:.0f} MiB over 200 requests"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=WAIT)


@pytest.mark.slow
def test_two_ray_serve_replicas_behind_one_endpoint():
    pytest.importorskip("ray")
    from diffuspec import DiffuSpec

    process, url = start_server("--replicas", "2", "--replica-cpus", "0.5")
    try:
        async def ask(client, prompt):
            response = await client.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": prompt,
                                                                        "max_tokens": 24, "temperature": 0})
            return response.json()

        async def main():
            async with httpx.AsyncClient(timeout=WAIT) as client:
                return await asyncio.gather(*(ask(client, p) for p in PROMPTS * 2))

        answers = asyncio.run(main())
        engine = DiffuSpec.from_pretrained("tiny", device="cpu")
        assert [a["choices"][0]["text"] for a in answers] == [engine.generate(p, 24).text for p in PROMPTS * 2]
        assert len({a["diffuspec"]["replica"] for a in answers}) == 2  # both replicas answered
        assert metric(url, "diffuspec:request_success_total") == len(answers)  # one /metrics for all replicas
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=WAIT)
