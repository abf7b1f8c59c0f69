"""The `slipguard.dlq` topic: a record that could not be decoded or validated.

It carries what a faithful replay needs: the source coordinates, the original Kafka
timestamp, headers, key and value. Every part is bounded so that a DLQ record fits any
broker's message size limit whatever came in: a value over 256 KiB is kept as its size,
SHA-256 and first 64 KiB (`value_truncated`); a key over 4 KiB and header values over
1 KiB likewise; at most 64 headers.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas.base import Message
from schemas.fields import Timestamp

VALUE_WHOLE_MAX = 256 * 1024  # values up to this size are kept whole
VALUE_PREFIX = 64 * 1024  # of a larger value, this much is kept
KEY_MAX = 4 * 1024
HEADER_VALUE_MAX = 1024
HEADERS_MAX = 64


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
    key_b64: str | None = None
    key_size: int | None = Field(None, ge=0)
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    key_truncated: bool = False
    value_b64: str | None = None
    value_size: int | None = Field(None, ge=0)
    value_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    value_truncated: bool = False
    value_redacted: bool = Field(False, description="metadata left out (SLIPGUARD_MINIMISE_PERSONAL_DATA): value_b64 "
                                                    "is the record without its metadata, absent if the record was not a "
                                                    "JSON object; value_size and value_sha256 describe the original")
    error: str = Field(max_length=4000)
    failed_at: Timestamp

    @staticmethod
    def b64(data: bytes | None) -> str | None:
        return None if data is None else base64.b64encode(data).decode("ascii")

    @classmethod
    def of(cls, *, topic: str, partition: int, offset: int, timestamp_ms: int | None,
           headers: Sequence[tuple[str, bytes | None]] | None, key: bytes | None, value: bytes | None,
           error: str, failed_at: datetime, minimise: bool = False) -> DeadLetter:
        """A dead letter of one input record, bounded in size whatever the record was;
        with `minimise`, its value without the record's metadata (see value_redacted)."""
        key_part = _bounded("key", key, KEY_MAX, KEY_MAX)
        value_part = _bounded("value", value, VALUE_WHOLE_MAX, VALUE_PREFIX)
        if minimise and value is not None:
            value_part = {**_bounded("value", _without_metadata(value), VALUE_WHOLE_MAX, VALUE_PREFIX),
                          "value_size": len(value), "value_sha256": hashlib.sha256(value).hexdigest(),
                          "value_redacted": True}
        dead_headers = None
        if headers:
            dead_headers = []
            for name, raw in list(headers)[:HEADERS_MAX]:
                cut = raw is not None and len(raw) > HEADER_VALUE_MAX
                dead_headers.append(DeadHeader(key=name[:1024], truncated=cut,
                                               value_b64=cls.b64(raw[:HEADER_VALUE_MAX] if cut else raw)))
        return cls(source_topic=topic, partition=partition, offset=offset,
                   timestamp_ms=timestamp_ms if timestamp_ms is not None and timestamp_ms >= 0 else None,
                   headers=dead_headers, error=error.replace("\n", " | ")[:3900], failed_at=failed_at,
                   **key_part, **value_part)


def _without_metadata(value: bytes) -> bytes | None:
    """The record without its `metadata` (re-encoded), or None if it is not a JSON object."""
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    obj.pop("metadata", None)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _bounded(name: str, data: bytes | None, whole_max: int, prefix: int) -> dict[str, object]:
    if data is None:
        return {}
    if len(data) <= whole_max:
        return {f"{name}_b64": DeadLetter.b64(data)}
    return {f"{name}_b64": DeadLetter.b64(data[:prefix]), f"{name}_size": len(data),
            f"{name}_sha256": hashlib.sha256(data).hexdigest(), f"{name}_truncated": True}
