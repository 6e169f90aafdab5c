"""Text as tokens arrive: incremental detokenizing and stop strings, in one place.

The engine's generations and the guest SDK's ``generate`` both use this
module (the sandbox build bundles this very file into the runner component),
so a stop string or a multi-byte character behaves the same through the HTTP
API, the OpenAI door and an inferlet.

Two things make streaming text harder than ``decode(tokens)``:

- A token may end in the middle of a UTF-8 character (byte-fallback tokens);
  its text is held until the character completes, so no ``\\ufffd`` is ever
  shown. Only a short window of tokens is decoded per token (the window keeps
  the previous token for context: SentencePiece-style tokenizers decide on
  leading spaces by what precedes), so the cost per token does not grow with
  the output.
- A stop string may arrive split over several tokens. Text that could be the
  start of a stop string is held back until it is either completed (the
  stream stops; the stop string and what follows are never shown) or ruled out.

This module imports nothing but the standard library: it must run inside the
WebAssembly guest too. It never touches tensors, tenants or the tokenizer
object itself: ``decode`` is handed in.
"""

from __future__ import annotations

from typing import Callable, Iterable

Decode = Callable[[list], str]


class TextStream:
    """Feed tokens with ``push``; each call returns the text that became safe to show.

    ``decode`` turns a list of token ids into text (special tokens skipped).
    After a stop string completes, ``stopped`` is true and ``push`` returns "".
    ``finish()`` releases text held back for a stop string that never came.
    ``text`` is everything shown so far.
    """

    def __init__(self, decode: Decode, stop: Iterable[str] = ()):
        self._decode = decode
        self.stop = [s for s in stop if s]
        self._ids: list[int] = []
        self._prefix = 0        # start of the window decoded for context
        self._read = 0          # tokens already turned into text
        self._before = ""       # decode(ids[prefix:read]): the window's text already turned
        self._held = ""         # text withheld while it might start a stop string
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        return self._show(self._detokenize(token))

    def finish(self) -> str:
        """The held-back tail, when the stream ends without its stop string."""
        held, self._held = self._held, ""
        if self.stopped:
            return ""
        self.text += held
        return held

    def _detokenize(self, token: int) -> str:
        self._ids.append(token)
        after = self._decode(self._ids[self._prefix:])
        if after.endswith("\ufffd"):
            return ""                     # in the middle of a multi-byte character
        delta = after[len(self._before):]
        self._prefix, self._read = self._read, len(self._ids)
        self._before = self._decode(self._ids[self._prefix:self._read]) if self._prefix < self._read else ""
        return delta

    def _show(self, delta: str) -> str:
        if not self.stop:
            self.text += delta
            return delta
        pending = self._held + delta
        cut = min((i for i in (pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            shown = pending[:cut]
        else:
            # Hold back the longest tail that could be the start of a stop string.
            keep = max((k for s in self.stop for k in range(1, len(s)) if pending.endswith(s[:k])), default=0)
            shown, self._held = (pending[:-keep], pending[-keep:]) if keep else (pending, "")
        self.text += shown
        return shown
