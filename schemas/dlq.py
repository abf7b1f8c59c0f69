"""The `slipguard.dlq` topic: a record that could not be decoded or validated.

It carries what a faithful replay needs: the source coordinates, the original Kafka
timestamp, headers, key and value. Building one cannot fail, and what it builds fits
the DLQ topic whatever came in (`encoded()`): a value over 256 KiB is kept as its size,
SHA-256 and first 64 KiB (`value_truncated`); a key over 4 KiB and header values over
1 KiB likewise; at most 64 headers. Where even that is over the topic's limit (a topic
configured small, a record of many long header names), tighter bounds are used, and
last a letter of coordinates, sizes and digests only, built without the model.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from schemas.base import Message
from schemas.fields import Timestamp

log = logging.getLogger("slipguard.dlq")


class Bounds(NamedTuple):
    """How much of a failed record a dead letter keeps."""

    value_whole: int  # values up to this size are kept whole
    value_prefix: int  # of a larger value, this much is kept
    key: int
    header_value: int
    headers: int
    header_name: int  # characters
    error: int  # characters


STANDARD = Bounds(256 * 1024, 64 * 1024, 4 * 1024, 1024, 64, 1024, 3900)
SMALL = Bounds(16 * 1024, 4 * 1024, 512, 128, 8, 64, 1000)
VALUE_WHOLE_MAX, VALUE_PREFIX, KEY_MAX, HEADER_VALUE_MAX, HEADERS_MAX = STANDARD[:5]
# What a DLQ record may take by default: under the producer's message.max.bytes
# (1,000,000), with room for the letter's own key and headers.
LETTER_MAX_BYTES = 1_000_000 - 4096
MINIMAL_MAX_BYTES = 2048  # the last resort's size, whatever the input (tests/schemas/test_dlq_fuzz.py)


class DeadHeader(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    key: str = Field(max_length=1024)
    value_b64: str | None = None
    truncated: bool = False


class DeadLetter(Message):
    source_topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    timestamp_ms: int | None = Field(None, description="the record's original Kafka timestamp (ms), if it had one")
    headers: list[DeadHeader] | None = Field(None, max_length=HEADERS_MAX)
    headers_dropped: int | None = Field(None, ge=0, description="headers left out to fit the DLQ topic (or that "
                                                                "could not be read); then the record cannot be "
                                                                "replayed as it was")
    key_b64: str | None = None
    key_size: int | None = Field(None, ge=0)
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    key_truncated: bool = False
    value_b64: str | None = None
    value_size: int | None = Field(None, ge=0)
    value_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    value_truncated: bool = False
    value_redacted: bool = Field(False, description="metadata left out (SLIPGUARD_MINIMISE_PERSONAL_DATA): value_b64 "
                                                    "is the record without its metadata, absent if the record was not "
                                                    "a JSON object; value_size and value_sha256 describe the original")
    error: str = Field(max_length=4000)
    failed_at: Timestamp

    @staticmethod
    def b64(data: bytes | None) -> str | None:
        return None if data is None else base64.b64encode(data).decode("ascii")

    @classmethod
    def of(cls, *, topic: str, partition: int, offset: int, timestamp_ms: int | None,
           headers: Sequence[tuple[str, bytes | None]] | None, key: bytes | None, value: bytes | None,
           error: str, failed_at: datetime, minimise: bool = False, bounds: Bounds = STANDARD,
           headers_unreadable: bool = False) -> DeadLetter:
        """A dead letter of one input record within `bounds`; with `minimise`, its value
        without the record's metadata (see value_redacted). `encoded()` is the way to
        make one for a topic: it cannot fail and fits the topic."""
        key_part = _bounded("key", key, bounds.key, bounds.key)
        value_part = _bounded("value", value, bounds.value_whole, bounds.value_prefix)
        if minimise and value is not None:
            value_part = {**_bounded("value", _without_metadata(value), bounds.value_whole, bounds.value_prefix),
                          "value_size": len(value), "value_sha256": hashlib.sha256(value).hexdigest(),
                          "value_redacted": True}
        kept, dropped = _headers(headers, bounds)
        if headers_unreadable:
            dropped = max(dropped, 1)
        return cls(source_topic=topic, partition=partition, offset=offset,
                   timestamp_ms=timestamp_ms if timestamp_ms is not None and timestamp_ms >= 0 else None,
                   headers=kept, headers_dropped=dropped or None,
                   error=_text(error.replace("\n", " | "), bounds.error), failed_at=failed_at,
                   **key_part, **value_part)


def encoded(*, max_bytes: int = LETTER_MAX_BYTES, **record: Any) -> bytes:
    """The dead letter of a record (DeadLetter.of's arguments), encoded, at most
    `max_bytes` (and never less than the last resort's MINIMAL_MAX_BYTES): never raises,
    whatever the record holds (lone surrogates, bytes that are not UTF-8, any size)."""
    for bounds in (STANDARD, SMALL):
        try:
            data = DeadLetter.of(bounds=bounds, **record).encode()
        except Exception:
            log.exception("a dead letter could not be built with %s bounds; trying tighter ones", bounds)
            continue
        if len(data) <= max_bytes:
            return data
    return minimal(**record)


def minimal(*, topic: Any, partition: Any, offset: Any, timestamp_ms: Any, key: Any, value: Any, error: Any,
            failed_at: Any, headers: Any = None, minimise: bool = False, headers_unreadable: bool = False) -> bytes:
    """A letter of coordinates, sizes and digests only, made with json (ASCII) from plain
    values: nothing in it can fail to encode, and it is at most MINIMAL_MAX_BYTES."""
    def number(x: Any) -> int:
        return x if type(x) is int and 0 <= x < 2**63 else 0

    def digest(part: str, data: Any) -> dict[str, Any]:
        if not isinstance(data, bytes):
            return {}
        return {f"{part}_size": len(data), f"{part}_sha256": hashlib.sha256(data).hexdigest(),
                f"{part}_truncated": True}

    try:
        at = failed_at.isoformat()
    except Exception:  # noqa: BLE001
        at = "1970-01-01T00:00:00+00:00"
    letter = {"source_topic": _ascii(topic, 249), "partition": number(partition), "offset": number(offset),
              "headers_dropped": 1 if headers or headers_unreadable else None,
              "error": _ascii(error, 300) + " (dead letter reduced to fit the DLQ topic)", "failed_at": at,
              **digest("key", key), **digest("value", value)}
    if type(timestamp_ms) is int and 0 <= timestamp_ms < 2**63:
        letter["timestamp_ms"] = timestamp_ms
    return json.dumps({k: v for k, v in letter.items() if v is not None}, ensure_ascii=True,
                      separators=(",", ":")).encode("ascii")


def _ascii(text: Any, limit: int) -> str:
    """At most `limit` printable ASCII characters (json writes each as one or two bytes)."""
    try:
        shown = text if isinstance(text, str) else repr(text)
        return shown[:limit].encode("ascii", "backslashreplace").decode("ascii")[:limit]
    except Exception:  # noqa: BLE001 (a str subclass that misbehaves)
        return "(text that cannot be shown)"


def _text(text: str, limit: int) -> str:
    """At most `limit` characters, every one encodable as UTF-8 (a lone surrogate becomes
    its escape)."""
    try:
        return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")[:limit]
    except Exception:  # noqa: BLE001 (a str subclass that misbehaves)
        return "(text that cannot be shown)"


def _headers(headers: Sequence[tuple[str, bytes | None]] | None, bounds: Bounds) -> tuple[list[DeadHeader] | None, int]:
    """The headers a letter keeps, and how many it leaves out."""
    if not headers:
        return None, 0
    kept = []
    for name, raw in list(headers)[: bounds.headers]:
        cut = raw is not None and len(raw) > bounds.header_value
        kept.append(DeadHeader(key=_text(name, bounds.header_name), truncated=cut,
                               value_b64=DeadLetter.b64(raw[: bounds.header_value] if raw is not None else None)))
    return kept, max(0, len(headers) - bounds.headers)


def _without_metadata(value: bytes) -> bytes | None:
    """The record without its `metadata` (re-encoded as ASCII, so a lone surrogate stays
    an escape), or None if it is not a JSON object."""
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    obj.pop("metadata", None)
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _bounded(name: str, data: bytes | None, whole_max: int, prefix: int) -> dict[str, Any]:
    if data is None:
        return {}
    if len(data) <= whole_max:
        return {f"{name}_b64": DeadLetter.b64(data)}
    return {f"{name}_b64": DeadLetter.b64(data[:prefix]), f"{name}_size": len(data),
            f"{name}_sha256": hashlib.sha256(data).hexdigest(), f"{name}_truncated": True}
