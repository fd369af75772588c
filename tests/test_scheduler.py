"""The engine's request queue: first come first served, an admission limit, cancellation before the start (no
prefill) and before the next step, failures kept to their request, and no thread per waiting request. Scripted
decodings make the order of events exact; the engine tests at the end run the real loop."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import threading
import weakref

import pytest

from diffuspec import DiffuSpec, DiffuSpecConfig
from diffuspec.aio import Outbox
from diffuspec.errors import DiffuSpecError, EngineOverloaded
from diffuspec.events import Generation, StepEvent
from diffuspec.scheduler import Request, Scheduler, _alive, close_all
from diffuspec.stats import DecodingStats

WAIT = 30  # seconds: a bound for a hang, never a timing


class Scripted:
    """A decoding of ``steps`` steps that logs (name, step) to ``log``; a step may wait for ``gate`` (an event,
    or a semaphore holding one permit per step)."""

    def __init__(self, name: str, steps: int, log: list, gate: threading.Event | None = None,
                 fail_at: int | None = None) -> None:
        self.name, self.steps, self.log, self.gate, self.fail_at = name, steps, log, gate, fail_at
        self.taken, self.closed, self.entered = 0, False, threading.Event()

    def step(self) -> StepEvent:
        self.entered.set()
        if isinstance(self.gate, threading.Event):
            assert self.gate.wait(WAIT)
        elif self.gate is not None:  # a semaphore: one permit per step
            assert self.gate.acquire(timeout=WAIT)
        self.taken += 1
        self.log.append((self.name, self.taken))
        if self.taken == self.fail_at:
            raise RuntimeError(f"{self.name} failed")
        finish = "length" if self.taken == self.steps else None
        return StepEvent(f"{self.name}{self.taken} ", (self.taken,), 0, 0, DecodingStats(steps=self.taken), finish)

    def close(self) -> None:
        self.closed = True


def request(decoding: Scripted, started: list | None = None, loop=None) -> Request:
    def start():
        if started is not None:
            started.append(decoding.name)
        return decoding

    return Request(start, Outbox(loop), [1, 2, 3])


def texts(req: Request) -> str:
    return "".join(event.text for event in req.events())


def test_first_come_first_served_one_at_a_time():
    log, scheduler = [], Scheduler(max_running=1)
    reqs = [request(Scripted(name, 2, log)) for name in "abc"]
    for r in reqs:
        scheduler.submit(r)
    assert [texts(r) for r in reqs] == ["a1 a2 ", "b1 b2 ", "c1 c2 "]
    assert log == [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 1), ("c", 2)]
    assert scheduler.wait_idle(WAIT) and all(r.done for r in reqs)


def test_running_requests_take_a_step_each_in_turn():
    log, gate, scheduler = [], threading.Event(), Scheduler(max_running=2)
    reqs = [request(Scripted(name, 3, log, gate)) for name in "abc"]
    for r in reqs:
        scheduler.submit(r)
    gate.set()
    assert [texts(r) for r in reqs] == ["a1 a2 a3 ", "b1 b2 b3 ", "c1 c2 c3 "]
    # a and b alternate (b starts before a ends); c waits for a slot (it starts after a's last step)
    assert log.index(("b", 1)) < log.index(("a", 3)) < log.index(("c", 1))
    assert all(log.index((n, 1)) < log.index((n, 2)) < log.index((n, 3)) for n in "abc")


def test_a_waiting_request_cancelled_never_starts():
    log, gate, started, scheduler = [], threading.Event(), [], Scheduler(max_running=1)
    first, second, third = (request(Scripted(n, 2, log, gate), started) for n in "abc")
    for r in (first, second, third):
        scheduler.submit(r)
    second.cancel()
    assert second.done  # left the queue at once
    gate.set()
    assert texts(first) == "a1 a2 " and texts(third) == "c1 c2 "
    assert started == ["a", "c"] and second.started_at is None and second.done


def test_a_running_request_cancelled_stops_before_its_next_step():
    log, gate, scheduler = [], threading.Event(), Scheduler(max_running=1)
    decoding = Scripted("a", 100, log, gate)
    first, second = request(decoding), request(Scripted("b", 1, log))
    scheduler.submit(first)
    scheduler.submit(second)
    assert decoding.entered.wait(WAIT)
    first.cancel()  # while its first step waits at the gate
    gate.set()
    assert texts(second) == "b1 "  # its slot went to the next request
    assert decoding.taken == 1 and decoding.closed  # the step under way finished, no other began


def test_leaving_the_event_stream_early_cancels_the_request():
    log, permits, scheduler = [], threading.Semaphore(1), Scheduler(max_running=1)
    decoding = Scripted("a", 100, log, permits)
    r = request(decoding)
    scheduler.submit(r)
    events = r.events()
    next(events)
    events.close()  # the worker waits in step 2 for a permit
    for _ in range(100):
        permits.release()
    assert scheduler.wait_idle(WAIT) and decoding.closed and decoding.taken == 2


def test_the_queue_is_bounded():
    log, gate, scheduler = [], threading.Event(), Scheduler(max_running=1, max_waiting=1)
    running, waiting = request(Scripted("a", 1, log, gate)), request(Scripted("b", 1, log))
    scheduler.submit(running)
    scheduler.submit(waiting)
    with pytest.raises(EngineOverloaded, match="queue is full"):
        scheduler.submit(request(Scripted("c", 1, log)))
    gate.set()
    assert texts(running) == "a1 " and texts(waiting) == "b1 "


def test_a_failing_request_fails_alone():
    log, scheduler = [], Scheduler(max_running=2)
    bad, good = request(Scripted("a", 5, log, fail_at=2)), request(Scripted("b", 3, log))
    scheduler.submit(bad)
    scheduler.submit(good)
    events = bad.events()
    assert next(events).text == "a1 "
    with pytest.raises(RuntimeError, match="a failed"):
        next(events)
    assert texts(good) == "b1 b2 b3 "


def test_the_worker_thread_exists_only_while_there_is_work():
    log, scheduler = [], Scheduler()
    r = request(Scripted("a", 2, log))
    scheduler.submit(r)
    assert texts(r) == "a1 a2 "
    assert scheduler.wait_idle(WAIT)
    for _ in range(1000):
        if not any(t.name == "diffuspec-scheduler" and t.is_alive() for t in threading.enumerate()):
            break
        threading.Event().wait(0.005)
    assert not any(t.name == "diffuspec-scheduler" and t.is_alive() for t in threading.enumerate())


def test_async_consumers_wait_without_threads():
    log, gate, scheduler = [], threading.Event(), Scheduler(max_running=1)

    async def main():
        loop = asyncio.get_running_loop()
        reqs = [request(Scripted(f"r{i}-", 2, log, gate), loop=loop) for i in range(20)]
        for r in reqs:
            scheduler.submit(r)
        threads = threading.active_count()

        async def read(r):
            return "".join([e.text async for e in r])

        tasks = [asyncio.create_task(read(r)) for r in reqs]
        await asyncio.sleep(0.05)
        during = threading.active_count()
        gate.set()
        return threads, during, await asyncio.gather(*tasks)

    threads, during, answers = asyncio.run(main())
    assert during == threads  # 20 requests waiting, not one thread more
    assert answers == [f"r{i}-1 r{i}-2 " for i in range(20)]


def test_closing_cancels_what_is_left_and_tells_its_consumers():
    log, gate, scheduler = [], threading.Event(), Scheduler(max_running=1)
    running, waiting = request(Scripted("a", 100, log, gate)), request(Scripted("b", 1, log))
    scheduler.submit(running)
    scheduler.submit(waiting)
    closer = threading.Thread(target=scheduler.close, args=(0.0,))
    closer.start()
    with pytest.raises(DiffuSpecError, match="shut down"):
        texts(waiting)
    gate.set()
    closer.join(WAIT)
    with pytest.raises(DiffuSpecError, match="shut down"):
        texts(running)
    with pytest.raises(DiffuSpecError, match="takes no new requests"):
        scheduler.submit(request(Scripted("c", 1, log)))


def test_close_all_cancels_and_joins_every_worker():
    log, gate, scheduler = [], threading.Semaphore(0), Scheduler(max_running=1)
    running, waiting = request(Scripted("a", 100, log, gate)), request(Scripted("b", 1, log))
    scheduler.submit(running)
    scheduler.submit(waiting)
    worker = scheduler._worker
    closer = threading.Thread(target=close_all, args=(WAIT,))
    closer.start()
    for _ in range(3):
        gate.release()  # the step in progress finishes; at most one more is taken before the cancel lands
    closer.join(WAIT)
    assert not worker.is_alive() and scheduler.idle and len(log) <= 2
    with pytest.raises(DiffuSpecError, match="shut down"):
        texts(waiting)


def test_schedulers_are_held_weakly():
    scheduler = Scheduler()
    held = weakref.ref(scheduler)
    assert scheduler in _alive
    del scheduler
    gc.collect()
    assert held() is None


def test_the_interpreter_exits_cleanly_while_a_request_runs():
    """A request still decoding when the main thread ends: it is cancelled and the worker joined at exit (a
    daemon thread frozen inside torch would abort the process: "terminate called without an active exception")."""
    script = textwrap.dedent("""
        import atexit, threading
        atexit.register(lambda: print("workers left:", sum(t.name == "diffuspec-scheduler" and t.is_alive()
                                                           for t in threading.enumerate()), flush=True))
        import torch
        from diffuspec.aio import Outbox
        from diffuspec.events import StepEvent
        from diffuspec.scheduler import Request, Scheduler
        from diffuspec.stats import DecodingStats

        class Endless:  # a decoding inside torch that never finishes by itself
            def step(self):
                x = torch.randn(512, 512)
                for _ in range(20):
                    x = torch.tanh(x @ x)
                return StepEvent("", (), 0, 0, DecodingStats(), None)
            def close(self):
                pass

        request = Request(Endless, Outbox(), [1])
        Scheduler(context=torch.inference_mode).submit(request)
        request.outbox.get()
        print("running", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "running" in done.stdout and "workers left: 0" in done.stdout
    assert "terminate called" not in done.stderr


@pytest.mark.parametrize("bad", [dict(max_running=0), dict(max_running=True), dict(max_waiting=-1)])
def test_bad_limits_are_refused(bad):
    with pytest.raises(DiffuSpecError, match="max_running|max_waiting"):
        Scheduler(**bad)


# ----- the real engine ---------------------------------------------------------------------------------------

PROMPTS = ["the quick brown fox", "a, b. c", "zzz", "def f(x):"]


def test_interleaved_requests_each_get_their_own_answer(targets, drafter, tokenizer):
    """Four requests decoded a step each in turn equal each one decoded alone: greedy and seeded sampling."""
    alone = DiffuSpec(targets["llama"], drafter, tokenizer, DiffuSpecConfig(length_policy="adl"))
    shared = DiffuSpec(targets["llama"], drafter, tokenizer, DiffuSpecConfig(length_policy="adl"), max_running=4)
    calls = [dict(prompt=p, max_new_tokens=30, temperature=t, seed=3) for p in PROMPTS for t in (0.0, 1.0)]
    expected = [alone.generate(**c).token_ids for c in calls]
    requests = [shared.submit(**c) for c in calls]
    assert [Generation.collect(r.events()).token_ids for r in requests] == expected


def test_a_request_cancelled_while_waiting_never_starts(targets, drafter, tokenizer):
    engine = DiffuSpec(targets["llama"], drafter, tokenizer)
    first = engine.submit(PROMPTS[0], max_new_tokens=60)
    second = engine.submit(PROMPTS[1], max_new_tokens=60)
    second.cancel()
    assert Generation.collect(first.events()).token_ids
    assert engine.scheduler.wait_idle(WAIT)
    assert second.done and second.started_at is None  # no prefill, no step


def test_a_full_queue_refuses_at_submission(targets, drafter, tokenizer):
    engine = DiffuSpec(targets["llama"], drafter, tokenizer, max_waiting=0)  # a free slot, or no
    first = engine.submit(PROMPTS[0], max_new_tokens=200)
    with pytest.raises(EngineOverloaded, match="retry later"):
        engine.submit(PROMPTS[1], max_new_tokens=5)
    first.cancel()
    assert engine.scheduler.wait_idle(WAIT)
    assert engine.generate(PROMPTS[1], max_new_tokens=5).token_ids
