"""The errors diffuspec raises. A module of its own, imported by every other one and importing none."""

from __future__ import annotations


class DiffuSpecError(ValueError):
    """Bad input or a bad model pair. The message names the problem and the fix."""


class EngineOverloaded(DiffuSpecError):
    """The engine's queue of waiting requests is full: retry later, or give the engine a larger ``max_waiting``."""


class EngineClosed(DiffuSpecError):
    """The engine is shutting down: it takes no new requests, and those it cancels end with this error."""
