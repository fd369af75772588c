"""Stop strings over text that grows by whole drafted blocks.

A block can carry a stop string anywhere inside it, or finish one begun in an earlier block, so the search
restarts a little before the new text; a stream holds back any tail that could still become a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence


def find_stop(text: str, stops: Sequence[str], new_from: int) -> int:
    """Index of the earliest stop string in ``text`` that ends after ``new_from``, or -1."""
    found = -1
    for stop in stops:
        i = text.find(stop, max(0, new_from - len(stop) + 1))
        if i != -1 and (found == -1 or i < found):
            found = i
    return found


def safe_length(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` can be shown now: not a tail that may begin a stop string, nor a partial
    UTF-8 character (decoded as U+FFFD until its last byte arrives)."""
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, end), hold, -1):
            if text.endswith(stop[:n], 0, end):
                hold = n
                break
    return end - hold
