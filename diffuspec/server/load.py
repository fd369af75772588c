"""``diffuspec bench-serve``: requests per second and latency percentiles of ``diffuspec serve`` under 1, 4
and 16 concurrent clients, for one process and for Ray Serve replicas.

Each set-up is started as its own ``diffuspec serve`` process on a free local port (or ``--url`` names a server
already running), warmed up, then each client count is measured: that many clients send streamed greedy
completions back to back until ``--requests`` have been answered. Every answer is compared with the first one
for its prompt (greedy output is the same under any load: a mismatch is a bug, and is reported). Figures are
wall-clock on the machine it runs on; the results record the command, commit, machine and date."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import DiffuSpecError

STARTUP_SECONDS = 600  # loading a real model on a busy machine, or starting Ray, can take minutes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def _one(client: Any, url: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start, first, text, tokens = time.perf_counter(), None, [], 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise DiffuSpecError(f"the server answered {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise DiffuSpecError(f"the server failed a request: {chunk['error']['message']}")
            for choice in chunk.get("choices", []):
                if choice.get("text"):
                    first = first or time.perf_counter()
                    text.append(choice["text"])
            tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
    end = time.perf_counter()
    return {"latency": end - start, "ttft": (first or end) - start, "tokens": tokens, "text": "".join(text)}


async def measure(url: str, model: str, prompts: list[str], clients: int, requests: int, max_tokens: int,
                  expected: dict[int, str]) -> dict[str, Any]:
    """``clients`` concurrent clients answering ``requests`` requests (prompts in turn) between them."""
    import httpx

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    results, mismatches = [], 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal mismatches
        while not queue.empty():
            i = queue.get_nowait()
            result = await _one(client, url, model, prompts[i % len(prompts)], max_tokens)
            reference = expected.setdefault(i % len(prompts), result["text"])
            mismatches += result["text"] != reference
            results.append(result)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600.0), limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        seconds = time.perf_counter() - start
    latencies, ttfts = [r["latency"] for r in results], [r["ttft"] for r in results]
    return {
        "clients": clients, "requests": len(results), "seconds": seconds,
        "requests_per_second": len(results) / seconds,
        "tokens_per_second": sum(r["tokens"] for r in results) / seconds,
        "p50_latency": _percentile(latencies, 0.5), "p99_latency": _percentile(latencies, 0.99),
        "p50_ttft": _percentile(ttfts, 0.5), "mismatches": mismatches,
    }


def _wait_ready(url: str, process: subprocess.Popen | None, seconds: float) -> str:
    """The served model's name, once the server answers."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DiffuSpecError(f"the server exited with status {process.returncode} before it was ready")
        try:
            models = httpx.get(f"{url}/v1/models", timeout=5).json()
            return models["data"][0]["id"]
        except (httpx.HTTPError, KeyError, ValueError):
            time.sleep(0.5)
    raise DiffuSpecError(f"the server at {url} was not ready within {seconds:.0f} s")


def _start(args: argparse.Namespace, replicas: int) -> tuple[subprocess.Popen, str]:
    from ..load_arguments import LOAD_ARGUMENTS

    port = _free_port()
    command = [sys.executable, "-m", "diffuspec", "serve", "--port", str(port), "--replicas", str(replicas),
               "--replica-cpus", str(args.replica_cpus), "--max-running", str(args.max_running)]
    for option in ("target", "drafter", "ar_drafter", "mode", *(a.name for a in LOAD_ARGUMENTS)):
        value = getattr(args, option, None)
        if value is True:
            command.append(f"--{option.replace('_', '-')}")
        elif value is not None:
            command += [f"--{option.replace('_', '-')}", str(value)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL), f"http://127.0.0.1:{port}"


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(results: dict[str, Any]) -> str:
    lines = ["| set-up | clients | requests/s | p50 latency (s) | p99 latency (s) | p50 first token (s) | tokens/s |"
             " mismatches |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in results["runs"]:
        for r in run["levels"]:
            lines.append(f"| {run['setup']} | {r['clients']} | {r['requests_per_second']:.2f} | {r['p50_latency']:.2f} "
                         f"| {r['p99_latency']:.2f} | {r['p50_ttft']:.2f} | {r['tokens_per_second']:.1f} "
                         f"| {r['mismatches']} |")
    s = results["settings"]
    lines.append(f"\n`{s['command']}` at {s['commit']} on {s['machine']}, {s['date']}")
    return "\n".join(lines)


def bench_serve(args: argparse.Namespace, prompts: list[str]) -> dict[str, Any]:
    for name in ("requests", "max_tokens", "max_running"):
        if getattr(args, name) < 1:
            raise DiffuSpecError(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.clients) < 1 or min(args.replicas) < 1:
        raise DiffuSpecError("--clients and --replicas must be at least 1")
    setups = [("given server", None)] if args.url else [
        ("one process" if n == 1 else f"{n} Ray Serve replicas", n) for n in args.replicas]
    runs = []
    for label, replicas in setups:
        process, url = (None, args.url.rstrip("/")) if replicas is None else _start(args, replicas)
        try:
            model = _wait_ready(url, process, STARTUP_SECONDS)
            expected: dict[int, str] = {}
            asyncio.run(measure(url, model, prompts, 1, min(2, len(prompts)), args.max_tokens, expected))  # warm-up
            levels = [asyncio.run(measure(url, model, prompts, c, args.requests, args.max_tokens, expected))
                      for c in args.clients]
            runs.append({"setup": label, "replicas": replicas, "model": model, "levels": levels})
        finally:
            if process is not None:
                _stop(process)
    results = {"runs": runs, "settings": {
        "command": "diffuspec " + " ".join(sys.argv[1:]), "commit": _commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "max_tokens": args.max_tokens,
        "requests": args.requests}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(results, indent=2))
    (out / "serve.md").write_text(markdown(results) + "\n")
    return results
