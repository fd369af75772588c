"""Freeing the OpenMP helper threads of a thread that hands its torch work to the engine's worker.

The OpenMP runtime keeps a team of helper threads for every thread that has run a parallel region, and once it
manages more threads than the process may use CPUs, it stops spinning between regions: every later region
wakes its helpers through the kernel. A model loaded or run in the caller's thread leaves that thread's team
alive, so the scheduler's worker ran Gemma 3 270M's one-token steps at 73 ms instead of the 44 ms the same
steps take in the caller's thread (int8, 2 CPUs, measured). A thread that submits a request and waits for it
has no use for its team meanwhile: it frees it (OpenMP 5's ``omp_pause_resource_all``) and gets a new one the
next time it computes.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

OMP_PAUSE_SOFT = 1


@functools.cache
def _pause_all() -> Callable[[int], int] | None:
    """The runtime's ``omp_pause_resource_all`` (torch loads it into the process), or None where there is none."""
    try:
        pause = ctypes.CDLL(None).omp_pause_resource_all
    except (AttributeError, OSError):  # no OpenMP runtime in the process, or no global symbol table (Windows)
        return None
    pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
    return pause


def release_idle_threads() -> bool:
    """Free the calling thread's OpenMP helper threads; False where the runtime has no such call, or refuses
    (inside a parallel region)."""
    pause = _pause_all()
    return pause is not None and pause(OMP_PAUSE_SOFT) == 0
