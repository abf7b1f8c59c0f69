"""A dead letter can always be built, and it always fits the DLQ topic, whatever the record.

The join and the writer send every record they cannot take to the DLQ; if that fails,
the record is lost or the worker dies (a lone surrogate in a minimised letter once
raised UnicodeEncodeError outside the worker's loop). So `schemas.dlq.encoded` is
fuzzed here with what a hostile producer can write: any bytes, JSON with lone
surrogates and deep nesting, huge keys and values, many long header names.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas.dlq import LETTER_MAX_BYTES, MINIMAL_MAX_BYTES, DeadLetter, encoded, minimal

NOW = datetime(2026, 12, 6, tzinfo=UTC)
SURROGATES = ["\ud800", "\udfff", "\udc80"]

texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
    ["", "a\ud800b", "\x00", "é" * 2000, "\\ud800", "\"" * 3000])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4), max_leaves=20)


@st.composite
def values(draw) -> bytes | None:
    kind = draw(st.sampled_from(["bytes", "json", "surrogate", "deep", "huge", "none"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        import json
        return json.dumps({"metadata": draw(json_values), "x": draw(json_values)}).encode()
    if kind == "surrogate":
        return b'{"payment_id":"p","metadata":{"k":"\\ud800"},"order_id":"o\xed\xa0\x80"}'
    if kind == "deep":
        depth = draw(st.integers(100, 5_000))
        return b'{"metadata":' + b"[" * depth + b"]" * depth + b"}"
    if kind == "huge":
        return draw(st.sampled_from([b"x", b"\xff", b'{"a":"'])) * draw(st.sampled_from([300_000, 1_100_000]))
    return None


headers = st.lists(st.tuples(texts | st.sampled_from(["n" * 5000, "\ud800" * 300]),
                             st.none() | st.binary(max_size=64) | st.just(b"v" * 20_000)), max_size=120)


@settings(max_examples=int(os.environ.get("SLIPGUARD_FUZZ_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(topic=texts, partition=st.integers(-5, 2**40), offset=st.integers(-5, 2**70),
       timestamp_ms=st.none() | st.integers(-(2**70), 2**70), key=values(), value=values(), error=texts,
       headers=st.none() | headers, minimise=st.booleans(), unreadable=st.booleans(),
       max_bytes=st.sampled_from([0, 1_000, 4_096, 65_536, 300_000, LETTER_MAX_BYTES]))
@example(topic="payments", partition=0, offset=1, timestamp_ms=1, key=b"o",
         value=b'{"order_id":"o","metadata":{"k":"\\ud800"}}', error="bad", headers=None, minimise=True,
         unreadable=False, max_bytes=LETTER_MAX_BYTES)  # issue: a lone surrogate killed the join when minimising
@example(topic="payments", partition=0, offset=1, timestamp_ms=1, key=b"o", value=b'{"user_id":"\\ud800"}',
         error="bad", headers=None, minimise=True, unreadable=False, max_bytes=LETTER_MAX_BYTES)
@example(topic="payments", partition=0, offset=1, timestamp_ms=1, key=b"o", value=b'{"v":"\xed\xa0\x80"}',
         error="bad \ud800", headers=[("traceparent", b"x" * 999_000)], minimise=True, unreadable=False,
         max_bytes=LETTER_MAX_BYTES)
def test_a_dead_letter_is_built_whatever_the_record_and_fits_the_topic(
        topic, partition, offset, timestamp_ms, key, value, error, headers, minimise, unreadable,
        max_bytes) -> None:
    data = encoded(max_bytes=max_bytes, topic=topic, partition=partition, offset=offset, timestamp_ms=timestamp_ms,
                   headers=headers, key=key, value=value, error=error, failed_at=NOW, minimise=minimise,
                   headers_unreadable=unreadable)
    assert len(data) <= max(max_bytes, MINIMAL_MAX_BYTES)
    back = DeadLetter.decode(data)  # a reader can read it (`slipguard dlq list`, subscribers)
    if value is not None and back.value_size is None:
        assert not back.value_redacted and back.value_b64 is not None
    if headers or unreadable:
        assert back.headers or back.headers_dropped, "a letter never hides that the record had headers"


def test_a_letter_too_big_for_the_topic_keeps_its_coordinates_sizes_and_digests() -> None:
    import hashlib

    value = b"v" * 500_000
    full = DeadLetter.decode(encoded(topic="orders", partition=2, offset=9, timestamp_ms=5, headers=None,
                                     key=b"k", value=value, error="too big", failed_at=NOW))
    assert full.value_truncated and full.value_size == len(value)
    small = DeadLetter.decode(encoded(max_bytes=1_000, topic="orders", partition=2, offset=9, timestamp_ms=5,
                                      headers=[("h", b"x")], key=b"k", value=value, error="too big", failed_at=NOW))
    assert (small.source_topic, small.partition, small.offset, small.timestamp_ms) == ("orders", 2, 9, 5)
    assert small.value_size == len(value) and small.value_sha256 == hashlib.sha256(value).hexdigest()
    assert small.headers_dropped == 1 and small.value_b64 is None and "too big" in small.error


@pytest.mark.parametrize("bad", [object(), b"bytes-topic", "\ud800" * 10_000])
def test_the_last_resort_takes_anything(bad) -> None:
    data = minimal(topic=bad, partition=bad, offset=bad, timestamp_ms=bad, key=bad, value=bad, error=bad,
                   failed_at=bad, headers=bad)
    assert len(data) <= MINIMAL_MAX_BYTES
    DeadLetter.decode(data)


def test_a_letter_whose_headers_were_left_out_is_not_replayed_as_it_is() -> None:
    from streams.ops.dlq import Letter, replayable

    many = [(f"h{i}", b"x") for i in range(100)]  # more than a letter keeps
    letter = DeadLetter.decode(encoded(topic="orders", partition=0, offset=1, timestamp_ms=5, headers=many, key=b"k",
                                       value=b"v", error="e", failed_at=NOW))
    assert letter.headers_dropped == 36
    assert "header" in (replayable(Letter(0, 1, letter)) or "")
