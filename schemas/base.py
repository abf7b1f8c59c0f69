"""Base class for every message: one-call decode from bytes and encode to bytes."""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict


class DuplicateKeyError(ValueError):
    """A JSON object names one key twice; readers disagree on which value counts."""


_QUOTE_SPACE = re.compile(rb'"[ \t\n\r]').search
_LEAVES = frozenset({str, int, float, bool, Decimal, datetime, type(None)})


def _keys(value: Any) -> int:
    """How many object keys the JSON text of `value` (as parsed, extras dropped) has."""
    if getattr(value.__class__, "flat_but_metadata", False):  # payments and orders: the hot path
        metadata = value.metadata
        return len(value.__pydantic_fields_set__) + (len(metadata) if metadata else 0)
    if isinstance(value, BaseModel):
        fields = value.__dict__
        n = 0
        for name in value.model_fields_set:
            n += 1
            v = fields[name]
            if v.__class__ not in _LEAVES:
                n += _keys(v)
        return n
    if isinstance(value, dict):
        n = len(value)
        for v in value.values():
            if v.__class__ not in _LEAVES:
                n += _keys(v)
        return n
    if isinstance(value, (list, tuple)):
        return sum(_keys(v) for v in value)
    return 0


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = ""
        for k, _ in pairs:
            if k in seen:
                dup = k
                break
            seen.add(k)
        raise DuplicateKeyError(f"JSON object names the key {dup[:64]!r} more than once")
    return out


def check_no_duplicate_keys(raw: bytes, parsed: BaseModel) -> None:
    """Raise DuplicateKeyError if any object in `raw` repeats a key.

    Fast and sound for the common case: with no whitespace before a colon, every key in
    the text contributes one `":`; if their count equals the keys the model kept, no key
    was repeated (or ignored). Otherwise the text is parsed again, exactly.
    """
    # (A quote followed by whitespace: perhaps a key before its colon; then count exactly.)
    if _QUOTE_SPACE(raw) is None and raw.count(b'":') == _keys(parsed):
        return
    json.loads(raw, object_pairs_hook=_no_duplicates)


class Message(BaseModel):
    """A message on one of slipguard's topics, as JSON in UTF-8."""

    # Inputs come from other services: unknown fields are ignored so that a producer adding
    # a field does not send every record to the DLQ; every known field is strictly checked.
    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=False)
    # True for models whose only nested object is a flat `metadata` (a fast key count).
    flat_but_metadata: ClassVar[bool] = False

    @classmethod
    def decode(cls, data: bytes | str) -> Self:
        """Parse and validate a record value in one step (raises pydantic.ValidationError,
        or DuplicateKeyError for an object that repeats a key)."""
        parsed = cls.model_validate_json(data)
        check_no_duplicate_keys(data.encode() if isinstance(data, str) else data, parsed)
        return parsed

    def encode(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self, by_alias=True, exclude_none=True)
