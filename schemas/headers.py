"""The headers on every record slipguard writes to a contract topic.

* `content-type`: `application/json`;
* `slipguard-type`: the message name, as in schemas/json/<name>.schema.json;
* `slipguard-schema-version`: the message's schema version (see docs/messages.md: compatibility);
* `traceparent`: the W3C trace context of the input the record came from, when that
  input had a valid one (version 00: 55 characters, lowercase hex, ids not all zero; a
  record with two `traceparent` headers has none); any other value is dropped, never
  copied. When two inputs are involved (a late order and its payment, a mismatched pair),
  the one that decided it is the `traceparent`, and `slipguard-links` lists the other's,
  comma-separated.

Reading a record's headers can fail: for a header name that is not UTF-8 (any client
but the Python one can write such a name), confluent-kafka's headers() returns a list
holding a NULL with an exception set. A generic call turns that into SystemError; a call
site that CPython 3.11 has specialised does not check, so the list comes back, and the
first code that touches it crashes the process (SIGSEGV: both join workers died on such a
record on the real broker). `read()` calls it through operator.methodcaller, which always
goes through the checked call path, once per record, and says why it could not.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable
from typing import Any

from schemas import MODELS
from schemas.base import Message
from schemas.recovery import SCHEMA_VERSION as RECOVERY_VERSION

CONTENT_TYPE = b"application/json"
TRACEPARENT = "traceparent"
LINKS = "slipguard-links"
# name -> current version; a breaking change is a new version on a new topic (docs/messages.md: compatibility)
SCHEMA_VERSIONS = dict.fromkeys(MODELS, 1) | {"recovery": RECOVERY_VERSION}
_NAME = {model: name for name, model in MODELS.items()}
_BASE: dict[type[Message], OutHeaders] = {model: [("content-type", CONTENT_TYPE), ("slipguard-type", name.encode()),
                 ("slipguard-schema-version", str(SCHEMA_VERSIONS[name]).encode())]
         for model, name in _NAME.items()}


OutHeaders = list[tuple[str, bytes]]  # the headers of a record slipguard writes
_TRACEPARENT = re.compile(rb"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}").fullmatch
Headers = list[tuple[str, bytes | None]]


def valid_traceparent(value: object) -> bool:
    """A W3C traceparent of version 00, exactly as the specification writes it."""
    return type(value) is bytes and len(value) == 55 and _TRACEPARENT(value) is not None


def headers_for(model: type[Message], traces: Iterable[bytes | None] = ()) -> OutHeaders:
    """The headers of a record of `model` derived from inputs with these traceparents
    (only valid ones are copied)."""
    headers: OutHeaders = list(_BASE[model])
    found = [t for t in traces if t and valid_traceparent(t)]
    if found:
        headers.append((TRACEPARENT, found[0]))
    if len(found) > 1:
        headers.append((LINKS, b",".join(found[1:])))
    return headers


def traceparent(headers: Any) -> bytes | None:
    """The valid traceparent among a record's headers (confluent-kafka's list of pairs):
    None if it has none, more than one, or one that is not valid."""
    if not headers:
        return None
    found = None
    for key, value in headers:
        if key == TRACEPARENT:
            if found is not None:
                return None  # two: which one is the caller's is unknowable
            found = value if value is not None else b""
    return found if found is not None and valid_traceparent(found) else None


_HEADERS = operator.methodcaller("headers")  # never `message.headers()`: see the module docstring


def read(message: Any) -> tuple[Headers | None, str | None]:
    """A consumed record's headers, asked of the client once: (headers, None), or (None,
    why) when they cannot be read. Never ask the message again after a failure."""
    try:
        return _HEADERS(message), None
    except Exception as exc:  # noqa: BLE001 (SystemError for a header name that is not UTF-8)
        return None, unreadable(exc)


def unreadable(exc: BaseException) -> str:
    """Why a record's headers could not be read (`exc`: what reading them raised)."""
    return f"the record's headers cannot be read ({type(exc).__name__}: a header name that is not UTF-8?)"
