"""A one-line progress note in the notebook while a long call runs, and whether we are in a kernel.

What it must never do: print outside a kernel, or leave its note behind when the call ends.
"""

from __future__ import annotations

import time


class Progress:
    """A one-line note in the notebook while a long call runs ("generating... 120 tokens").

    Shown only in a kernel, only once the call has taken ``delay`` seconds, and
    removed when it ends, so quick calls print nothing extra.
    """

    def __init__(self, label: str, delay: float = 1.0):
        self.label = label
        self.text = label
        self.delay = delay
        self.started = time.monotonic()
        self.handle = None
        self.shown_at = 0.0
        self.enabled = in_kernel()

    def update(self, text: str) -> None:
        self.text = text
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.started < self.delay or now - self.shown_at < 0.25:
            return
        self.shown_at = now
        from IPython.display import display
        data = {"text/plain": f"\u23f3 {text}"}
        if self.handle is None:
            self.handle = display(data, raw=True, display_id=True)
        else:
            self.handle.update(data, raw=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.update({"text/plain": ""}, raw=True)


def in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None
