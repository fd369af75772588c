"""Async streaming that never blocks the event loop and stops generating when the consumer stops.

The engine runs in a worker thread; each step's event crosses to the loop through a queue. When the async
consumer stops early (break, cancellation, an exception), the worker is told to stop and closes the engine's
stream before its next step, which frees the engine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

_DONE = object()


async def aiterate(make_stream: Any) -> AsyncIterator[Any]:
    """Iterate ``make_stream()`` (a sync iterator factory, called in the worker) from async code."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(item: Any) -> None:
        if stop.is_set():
            return
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop has closed: the consumer is gone
            stop.set()

    def work() -> None:
        stream: Iterator[Any] | None = None
        try:
            stream = make_stream()
            for item in stream:
                if stop.is_set():
                    break
                put(item)
            put(_DONE)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, re-raised there
            put(error)
        finally:
            if stream is not None and hasattr(stream, "close"):
                stream.close()

    worker = threading.Thread(target=work, name="diffuspec-stream", daemon=True)
    worker.start()
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
