"""What both integrations' tests share. A wrapper built without a target loads the default model; the fast tests
run that default path on the tiny preset (the 6M demo pair: no downloads, seconds), slow tests on the real default.
Wrapper-in-isolation tests feed scripted engine events (``ScriptedEngine``) beside a real-engine test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from diffuspec import DecodingStats, StepEvent


@pytest.fixture(autouse=True)
def tiny_default(request, monkeypatch):
    """The default model is the tiny preset in every test not marked slow."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setattr("diffuspec.presets.DEFAULT_PRESET", "tiny")


def _run_while_ticking(make_coroutine):
    """Run ``make_coroutine()`` on a fresh event loop beside a 5 ms ticker; return (its result, ticks).
    Few ticks mean the coroutine blocked the loop."""

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await make_coroutine()
        task.cancel()
        return result, ticks

    return asyncio.run(main())


@pytest.fixture
def run_while_ticking():
    return _run_while_ticking


class ScriptedEngine:
    """Stands in for a DiffuSpec engine to test a wrapper alone: the real demo tokenizer, and a stream of
    step events whose texts are given (the demo model does not write tool calls or JSON). ``prompts`` records
    the prompt ids and params each call got."""

    def __init__(self, tokenizer, texts: list[str]) -> None:
        self.tokenizer, self.texts, self.prompts = tokenizer, texts, []
        self.target = type("Target", (), {"name_or_path": "scripted"})()
        self.context_window = 512

    def stream(self, prompt_ids, *, params) -> Iterator[StepEvent]:
        self.prompts.append((list(prompt_ids), params))
        for i, text in enumerate(self.texts):
            steps = i + 1  # each step drafts 4 tokens, accepts 2 and commits 3
            stats = DecodingStats(steps=steps, new_tokens=3 * steps, drafted_tokens=4 * steps, accepted_tokens=2 * steps,
                                  draft_lengths=(4,) * steps, accepted_lengths=(2,) * steps)
            yield StepEvent(text, (0, 0, 0), 4, 2, stats, "eos" if steps == len(self.texts) else None)

    async def astream(self, prompt_ids, *, params) -> AsyncIterator[StepEvent]:
        for event in self.stream(prompt_ids, params=params):
            yield event


@pytest.fixture
def scripted_engine():
    return ScriptedEngine
