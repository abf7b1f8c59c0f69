"""A client call with a hard deadline (calls.bounded): its result, its error, or Wedged."""

from __future__ import annotations

import threading

import pytest

from streams.kafka.calls import Wedged, bounded


def test_the_call_s_result_is_returned_even_when_it_is_none() -> None:
    assert bounded(lambda: 5, "five", 5) == 5
    assert bounded(lambda: None, "nothing", 5) is None


def test_the_call_s_own_error_reaches_the_caller() -> None:
    def refuse() -> int:
        raise KeyError("refused")

    with pytest.raises(KeyError, match="refused"):
        bounded(refuse, "refuse", 5)


def test_a_call_past_its_deadline_raises_wedged_and_is_left_to_its_thread() -> None:
    release = threading.Event()
    try:
        with pytest.raises(Wedged, match="hang did not return"):
            bounded(lambda: release.wait(10), "hang", 0.1)
    finally:
        release.set()
