"""The one retry helper: deadline, backoff, what is retriable, stop requests, async."""

from __future__ import annotations

import asyncio

import pytest

from streams.retry import Retry, Stopped


class Flaky:
    """Fails `times` times with `error`, then returns "done"."""

    def __init__(self, times: int, error: Exception) -> None:
        self.times, self.error, self.calls = times, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return "done"


def _retry(clock: list[float], **kw) -> Retry:
    def sleep(d: float) -> None:
        clock[0] += d
    kw.setdefault("retriable", lambda e: isinstance(e, TimeoutError))
    kw.setdefault("deadline", 10.0)
    return Retry("test", sleep=sleep, clock=lambda: clock[0], first_delay=1.0, max_delay=4.0, **kw)


def test_retriable_errors_are_retried_with_growing_delays_until_success() -> None:
    clock = [0.0]
    fn = Flaky(3, TimeoutError("later"))
    assert _retry(clock, deadline=None).call(fn) == "done"
    assert fn.calls == 4 and clock[0] == 1 + 2 + 4


def test_an_error_that_is_not_retriable_goes_to_the_caller_at_once() -> None:
    clock = [0.0]
    fn = Flaky(5, PermissionError("denied"))
    with pytest.raises(PermissionError):
        _retry(clock).call(fn)
    assert fn.calls == 1 and clock[0] == 0


def test_past_the_deadline_the_last_error_goes_to_the_caller() -> None:
    clock = [0.0]
    fn = Flaky(100, TimeoutError("never"))
    with pytest.raises(TimeoutError):
        _retry(clock, deadline=10.0).call(fn)
    assert clock[0] <= 10.0 and fn.calls == 4  # slept 1, 2, 4; a fourth delay of 4 would pass 10 s


def test_a_stop_request_ends_the_retries() -> None:
    clock = [0.0]
    with pytest.raises(Stopped):
        _retry(clock, deadline=None, stopping=lambda: clock[0] >= 3).call(Flaky(100, TimeoutError("never")))


def test_on_retry_is_told_of_each_retry_instead_of_the_log() -> None:
    clock, seen = [0.0], []
    _retry(clock, on_retry=lambda exc, delay: seen.append((str(exc), delay))).call(Flaky(2, TimeoutError("x")))
    assert seen == [("x", 1.0), ("x", 2.0)]


def test_acall_retries_a_coroutine_the_same_way() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("later")
        return "done"

    retry = Retry("test", deadline=5.0, retriable=lambda e: isinstance(e, TimeoutError), first_delay=0.01)
    assert asyncio.run(retry.acall(flaky)) == "done" and len(calls) == 3
