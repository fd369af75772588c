"""Where a request's events wait for their consumer: a thread (blocking ``get``) or an asyncio event loop
(awaited ``aget``, no thread blocked). The scheduler's worker thread puts and never waits."""

from __future__ import annotations

import asyncio
import queue
from typing import Any


class Outbox:
    """One request's events (and, at the end, an exception), from the worker to one consumer. ``loop``: the
    consumer's event loop when it is async code, None for a thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._items: queue.SimpleQueue | asyncio.Queue = queue.SimpleQueue() if loop is None else asyncio.Queue()

    def put(self, item: Any) -> bool:
        """Hand ``item`` over; False when the consumer's event loop has closed (nobody will read it)."""
        if self._loop is None:
            self._items.put(item)
            return True
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the loop has closed: the consumer is gone
            return False
        return True

    def get(self) -> Any:
        return self._items.get()

    async def aget(self) -> Any:
        return await self._items.get()
