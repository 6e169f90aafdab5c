"""Token rates: how many tokens a tenant used in the last minute and today, and the check of a request
against ``tokens_per_minute`` / ``tokens_per_day``.

``TokenWindow`` counts tokens in 1-second buckets over the last minute and in the current UTC
day; it can start from usage recorded elsewhere (another engine of the pool, the shared ledger).
``check_token_rates`` and ``token_room`` weigh what is used and what is promised to running
generations against the quota's rates; a refusal names the field, its value, and when to retry.

What it must never do: know tenants, the loop or the database (callers pass the window, the
quota and what is reserved), or let a request through when the rates cannot hold it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from datetime import datetime, timezone
from typing import Callable

from .errors import QuotaExceeded, RequestTooLarge
from .quota import Quota


class TokenWindow:
    """Tokens used in the last minute (1-second buckets) and in the current UTC day.

    A window can start from usage recorded elsewhere (another engine of the pool, before a
    restart): ``day_start_tokens`` today's, ``recent`` the last minute's as (second, tokens)
    pairs, oldest first.
    """

    def __init__(self, day_start_tokens: int = 0, recent: tuple[tuple[int, int], ...] = ()):
        self._buckets: deque[tuple[int, int]] = deque(recent)
        self._minute = sum(n for _, n in recent)
        self._day = datetime.now(timezone.utc).date()
        self._day_tokens = day_start_tokens

    def _roll(self, now: float) -> None:
        sec = int(now)
        while self._buckets and self._buckets[0][0] <= sec - 60:
            self._minute -= self._buckets.popleft()[1]
        today = datetime.now(timezone.utc).date()
        if today != self._day:
            self._day, self._day_tokens = today, 0

    def add(self, n: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._roll(now)
        sec = int(now)
        if self._buckets and self._buckets[-1][0] == sec:
            self._buckets[-1] = (sec, self._buckets[-1][1] + n)
        else:
            self._buckets.append((sec, n))
        self._minute += n
        self._day_tokens += n

    def minute(self, now: float | None = None) -> int:
        self._roll(time.time() if now is None else now)
        return self._minute

    def day(self) -> int:
        self._roll(time.time())
        return self._day_tokens

    def seconds_until_minute_frees(self, need: int, limit: int, now: float | None = None) -> int:
        """How long until ``need`` more tokens fit under a per-minute ``limit`` (what Retry-After says)."""
        now = time.time() if now is None else now
        self._roll(now)
        used = self._minute
        if used + need <= limit:
            return 1
        for sec, n in self._buckets:
            used -= n
            if used + need <= limit:
                return max(1, math.ceil(sec + 60 - now))
        return 60

    @staticmethod
    def seconds_until_day_ends() -> int:
        now = datetime.now(timezone.utc)
        return max(1, 86400 - (now.hour * 3600 + now.minute * 60 + now.second))


def token_room(q: Quota, window: TokenWindow, reserved: Callable[[], int]) -> int | None:
    """Tokens that may still be used now under ``q``'s token rates, after ``window``'s and the
    ``reserved()`` ones (promised to running generations). None: no rate limit."""
    if q.tokens_per_minute is None and q.tokens_per_day is None:
        return None
    promised = reserved()
    rooms = []
    if q.tokens_per_minute is not None:
        rooms.append(q.tokens_per_minute - window.minute() - promised)
    if q.tokens_per_day is not None:
        rooms.append(q.tokens_per_day - window.day() - promised)
    return min(rooms)


def check_token_rates(q: Quota, window: TokenWindow, reserved: Callable[[], int], tokens: int = 0) -> None:
    """Refuse ``tokens`` more when they would pass ``q``'s token rates (``RequestTooLarge`` if they never
    can, else ``QuotaExceeded`` with ``retry_after``); ``reserved()`` are promised to running generations."""
    if q.tokens_per_minute is None and q.tokens_per_day is None:
        return
    promised = reserved()
    if q.tokens_per_minute is not None:
        used = window.minute() + promised
        if tokens > q.tokens_per_minute:
            raise RequestTooLarge("tokens_per_minute", q.tokens_per_minute,
                                  f"this request needs {tokens} tokens (its prompt and one new token) but your "
                                  f"tokens_per_minute limit is {q.tokens_per_minute}: it can never fit, "
                                  f"retrying will not help; send a shorter prompt")
        if used + tokens > q.tokens_per_minute:
            err = QuotaExceeded("tokens_per_minute", q.tokens_per_minute,
                                f"token rate limit: {used} tokens used or promised to running requests in "
                                f"the last minute (+{tokens} asked) against your tokens_per_minute limit "
                                f"{q.tokens_per_minute}; try again in a minute")
            err.retry_after = window.seconds_until_minute_frees(tokens + promised, q.tokens_per_minute)
            raise err
    if q.tokens_per_day is not None:
        used = window.day() + promised
        if tokens > q.tokens_per_day:
            raise RequestTooLarge("tokens_per_day", q.tokens_per_day,
                                  f"this request needs {tokens} tokens (its prompt and one new token) but your "
                                  f"tokens_per_day limit is {q.tokens_per_day}: it can never fit")
        if used + tokens > q.tokens_per_day:
            err = QuotaExceeded("tokens_per_day", q.tokens_per_day,
                                f"daily token limit: {used} tokens used or promised today (UTC) against "
                                f"your tokens_per_day limit {q.tokens_per_day}")
            err.retry_after = window.seconds_until_day_ends()
            raise err
