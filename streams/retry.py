"""The one retry helper: a deadline, a backoff, which errors are retriable, and what
happens when it runs out (the last error is raised to the caller, said once).

An error that retrying cannot fix (authorization, a record too large, bad
configuration) is not retriable: it goes to the caller at once, never retried forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("slipguard.retry")


class Stopped(Exception):
    """A stop was requested while a call was being retried."""


class Retry:
    """Call until success, a non-retriable error, the deadline, or a stop request.

    deadline: seconds from the first attempt (None: no deadline; then `stopping` is the
    only way out of a retriable error that never clears). Delays grow from `first_delay`
    by `factor` up to `max_delay`. Each retry is logged (after `quiet_for` seconds), or
    handed to `on_retry(error, delay)` instead. `call` sleeps with `sleep`; `acall` is the
    same for a coroutine function, sleeping with asyncio.
    """

    def __init__(self, what: str, *, deadline: float | None, retriable: Callable[[BaseException], bool],
                 first_delay: float = 0.2, max_delay: float = 5.0, factor: float = 2.0,
                 stopping: Callable[[], bool] = lambda: False, sleep: Callable[[float], object] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, quiet_for: float = 0.0,
                 on_retry: Callable[[BaseException, float], None] | None = None) -> None:
        self.what, self.deadline, self.retriable = what, deadline, retriable
        self.first_delay, self.max_delay, self.factor = first_delay, max_delay, factor
        self.stopping, self.sleep, self.clock, self.quiet_for = stopping, sleep, clock, quiet_for
        self.on_retry = on_retry
        self.attempts = 0

    def call(self, fn: Callable[[], T]) -> T:
        started, delay = self.clock(), self.first_delay
        while True:
            self.attempts += 1
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 (classified in _after)
                self._after(exc, started, delay)
            self.sleep(delay)
            delay = min(delay * self.factor, self.max_delay)

    async def acall(self, fn: Callable[[], Awaitable[T]]) -> T:
        started, delay = self.clock(), self.first_delay
        while True:
            self.attempts += 1
            try:
                return await fn()
            except Exception as exc:  # noqa: BLE001 (classified in _after)
                self._after(exc, started, delay)
            await asyncio.sleep(delay)
            delay = min(delay * self.factor, self.max_delay)

    def _after(self, exc: Exception, started: float, delay: float) -> None:
        """Raise what is not to be retried; say what is."""
        if not self.retriable(exc):
            raise exc
        if self.stopping():
            raise Stopped(f"stopped while trying to {self.what} ({exc})") from exc
        elapsed = self.clock() - started
        if self.deadline is not None and elapsed + delay > self.deadline:
            raise exc
        if self.on_retry is not None:
            self.on_retry(exc, delay)
        elif elapsed >= self.quiet_for:
            log.warning("cannot %s yet (%s); retrying in %.1fs", self.what, _short(exc), delay)


def _short(exc: BaseException) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.splitlines()[0][:300] if text else type(exc).__name__
