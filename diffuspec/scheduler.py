"""The engine's request queue. Requests wait in first-come order until one of ``max_running`` slots frees; one
worker thread (started when work arrives, gone when there is none) steps the running requests in turn, one
step each, and hands every event to the request's ``Outbox``. A waiting request that is cancelled leaves the
queue untouched (no prefill, nothing allocated); a running one is closed before its next step, freeing its slot
and its caches. No thread waits per request: async consumers await their outbox, sync ones block their own
thread only.

Each round of the worker holds every running request between two steps: where a batched verification of
several requests in one target pass would go.

At interpreter exit (``atexit``) every scheduler still alive is closed: its requests are cancelled and its worker,
a daemon thread, is given a few seconds to finish its current step and leave, so that it is never frozen inside
torch while the interpreter tears down (which aborts the process: "terminate called without an active
exception"). Schedulers are tracked weakly: an engine nobody holds is still garbage-collected.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

from .aio import Outbox
from .errors import DiffuSpecError, EngineClosed, EngineOverloaded
from .events import StepEvent
from .openmp import release_idle_threads

_ids = itertools.count(1)
logger = logging.getLogger(__name__)
EXIT_JOIN_SECONDS = 5.0  # how long, at interpreter exit, the workers get to finish their current step
_alive: weakref.WeakSet[Scheduler] = weakref.WeakSet()


@atexit.register
def close_all(timeout: float = EXIT_JOIN_SECONDS) -> None:
    """Close every scheduler still alive without a grace period (cancelling what runs or waits) and join their
    workers for up to ``timeout`` seconds in all. Run at interpreter exit."""
    schedulers = list(_alive)
    for scheduler in schedulers:
        scheduler._stop()
    deadline = time.monotonic() + timeout
    for scheduler in schedulers:
        worker = scheduler._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(max(0.0, deadline - time.monotonic()))


class Decoding(Protocol):
    """A started request: ``step()`` runs one step and returns its event (the last one has a finish reason);
    ``close()`` frees what the request holds, whether or not it finished."""

    def step(self) -> StepEvent: ...

    def close(self) -> None: ...


class Request:
    """One generation in an engine's queue, and its consumer's handle: ``events()`` (a thread) or ``async for``
    (an event loop) read its events; ``cancel()`` withdraws it. ``start`` builds its ``Decoding`` in the worker
    when a slot frees."""

    def __init__(self, start: Callable[[], Decoding], outbox: Outbox, prompt_ids: list[int]) -> None:
        self.id = next(_ids)
        self.prompt_ids = prompt_ids
        self.outbox = outbox
        self._start = start
        self._decoding: Decoding | None = None
        self._scheduler: Scheduler | None = None
        self.submitted_at = self.started_at = self.finished_at = None
        self.cancelled = False

    @property
    def queue_seconds(self) -> float | None:
        """How long it waited for a slot (None until it starts)."""
        return None if self.started_at is None else self.started_at - self.submitted_at

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    def cancel(self) -> None:
        """Withdraw the request: never started if it is still waiting, else stopped before its next step.
        Idempotent, and a no-op once it has finished."""
        if self._scheduler is not None:
            self._scheduler.cancel(self)
        else:
            self.cancelled = True

    def events(self) -> Iterator[StepEvent]:
        """Its events in this thread, until the last; leaving early cancels it."""
        try:
            while True:
                item = self.outbox.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            self.cancel()

    async def __aiter__(self) -> AsyncIterator[StepEvent]:
        """Its events in an event loop (the outbox must belong to it); leaving early cancels it."""
        try:
            while True:
                item = await self.outbox.aget()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            self.cancel()


class Scheduler:
    """See the module docstring. ``max_waiting`` bounds the queue (None: unbounded): a request that would wait
    behind that many others, every slot being taken, is refused with ``EngineOverloaded`` when submitted.
    ``context`` wraps the worker's whole run (the engine's: ``torch.inference_mode``)."""

    def __init__(self, max_running: int = 1, max_waiting: int | None = None,
                 context: Callable[[], AbstractContextManager] = nullcontext) -> None:
        if not (isinstance(max_running, int) and not isinstance(max_running, bool) and max_running >= 1):
            raise DiffuSpecError(f"max_running must be a positive integer (requests decoded at once), got {max_running!r}")
        if max_waiting is not None and not (isinstance(max_waiting, int) and not isinstance(max_waiting, bool)
                                            and max_waiting >= 0):
            raise DiffuSpecError(f"max_waiting must be an integer >= 0 or None (unbounded), got {max_waiting!r}")
        self.max_running, self.max_waiting, self._context = max_running, max_waiting, context
        self._lock = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._worker: threading.Thread | None = None
        self._closed = False
        _alive.add(self)

    # ----- what callers and monitors see ------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._waiting and not self._running

    def submit(self, request: Request) -> None:
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is shutting down and takes no new requests")
            capacity = None if self.max_waiting is None else self.max_running + self.max_waiting
            if capacity is not None and len(self._waiting) + len(self._running) >= capacity:
                raise EngineOverloaded(
                    f"the engine's queue is full ({self.max_waiting} requests waiting for {self.max_running} "
                    "slot(s)): retry later, or raise max_waiting"
                )
            request._scheduler, request.submitted_at = self, time.perf_counter()
            self._waiting.append(request)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="diffuspec-scheduler", daemon=True)
                self._worker.start()
        if threading.current_thread() is not self._worker:  # the submitter waits: its OpenMP team only slows the worker
            release_idle_threads()

    def cancel(self, request: Request) -> None:
        with self._lock:
            if request.done or request.cancelled:
                return
            request.cancelled = True
            if request in self._waiting:  # never started: nothing to free
                self._waiting.remove(request)
                request.finished_at = time.perf_counter()
                self._lock.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no request waits or runs; False if ``timeout`` seconds passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._waiting and not self._running, timeout)

    def close(self, grace_seconds: float = 0.0) -> None:
        """Take no new requests; let the running and waiting ones finish for up to ``grace_seconds``, then
        cancel the rest (their consumers get an ``EngineClosed`` error saying so)."""
        with self._lock:
            self._closed = True
        if not self.wait_idle(grace_seconds):
            self._stop()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=max(grace_seconds, 1.0))

    def _stop(self) -> None:
        """Take no new requests and cancel every waiting and running one, telling its consumer."""
        stop = EngineClosed("the engine shut down before this request finished")
        with self._lock:
            self._closed = True
            left = [*self._waiting, *self._running]
        for request in left:
            if not (request.done or request.cancelled):
                request.outbox.put(stop)
            self.cancel(request)

    # ----- the worker ------------------------------------------------------------------------------------

    def _work(self) -> None:
        with self._context():
            while True:
                with self._lock:
                    while self._waiting and len(self._running) < self.max_running:
                        self._running.append(self._waiting.popleft())
                    if not self._running:
                        self._worker = None  # a later submit starts another
                        self._lock.notify_all()
                        return
                    round_ = list(self._running)
                for request in round_:  # first come, first stepped
                    self._advance(request)

    def _advance(self, request: Request) -> None:
        finished = request.cancelled
        if not finished:
            try:
                if request._decoding is None:
                    request.started_at = time.perf_counter()
                    request._decoding = request._start()
                event: Any = request._decoding.step()
            except Exception as error:  # noqa: BLE001 - the request's own failure, raised in its consumer
                event = error
            delivered = request.outbox.put(event)
            finished = not delivered or isinstance(event, Exception) or event.finish_reason is not None
        if finished:
            self._retire(request)

    def _retire(self, request: Request) -> None:
        try:
            if request._decoding is not None:
                request._decoding.close()
        except Exception:  # noqa: BLE001 - the request is over all the same; the worker must live on
            logger.exception("freeing request %d failed", request.id)
        request._decoding = None
        with self._lock:
            self._running.remove(request)
            request.finished_at = time.perf_counter()
            self._lock.notify_all()
