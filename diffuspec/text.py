"""Output text: incremental detokenization and the one stop-string rule every mode shares.

The rule: read the output token by token, as AR decoding sees it. The first token after which some stop string
is complete ends generation; the text is cut just before the earliest such occurrence (never including it), and
the token ids keep every token up to and including that one. Whether a mode commits one token per step or a
whole drafted block, it feeds the same tokens in the same order here, so every mode gives the same text.

Detokenization is incremental (as in vLLM / TGI): each token is decoded together with a few tokens before it and
only the difference is new text, so the cost per token stays constant instead of re-decoding the whole output
every step; tokenizers whose decoding of a token depends on its neighbours (SentencePiece's leading spaces,
partial UTF-8 bytes) are handled by that window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .stopping import find_stop, safe_length

_WINDOW = 6  # tokens of left context decoded with each new token: enough for every tokenizer's merges


class OutputText:
    """The growing text of one generation, with stop strings applied by the rule above."""

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()) -> None:
        self.tokenizer, self.stops = tokenizer, tuple(stops)
        self.token_ids: list[int] = []
        self.text = ""  # decoded so far (before any stop cut)
        self.stop_at: int | None = None  # where the text is cut once a stop string completed
        self._prefix, self._read = 0, 0  # decode window start; tokens whose text is already in ``self.text``
        self._emitted = 0  # characters already handed to the consumer

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _push(self, token: int) -> None:
        self.token_ids.append(token)
        before = self._decode(self.token_ids[self._prefix : self._read])
        after = self._decode(self.token_ids[self._prefix :])
        if after.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its last byte
            return
        self.text += after[len(before) :]
        self._prefix, self._read = max(0, len(self.token_ids) - _WINDOW), len(self.token_ids)

    def add(self, tokens: Sequence[int]) -> int:
        """Feed this step's tokens; returns how many of them count (all, or up to the one that completed a
        stop string, after which the rest are dropped)."""
        for i, token in enumerate(tokens):
            grown_from = len(self.text)
            self._push(token)
            if self.stops and len(self.text) > grown_from:
                cut = find_stop(self.text, self.stops, grown_from)
                if cut != -1:
                    self.stop_at = cut
                    return i + 1
        return len(tokens)

    @property
    def stopped(self) -> bool:
        return self.stop_at is not None

    def take_new(self, final: bool) -> str:
        """Text not yet handed out that is safe to show: while generation goes on, a tail that could still
        begin a stop string (or an unfinished character) is held back; at the end everything before the cut."""
        if self.stop_at is not None:
            end = self.stop_at
        elif final:
            if self._read < len(self.token_ids):  # the output ended inside a character: show it as decoded
                ids = self.token_ids[self._prefix :]
                self.text += self._decode(ids)[len(self._decode(self.token_ids[self._prefix : self._read])) :]
                self._read = len(self.token_ids)
            end = len(self.text)
        else:
            end = safe_length(self.text, self.stops)
        new = self.text[self._emitted : max(end, self._emitted)]
        self._emitted = max(end, self._emitted)
        return new
