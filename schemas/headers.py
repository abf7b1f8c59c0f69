"""The headers on every record slipguard writes to a contract topic.

* `content-type`: `application/json`;
* `slipguard-type`: the message name, as in schemas/json/<name>.schema.json;
* `slipguard-schema-version`: the message's schema version (see README: compatibility);
* `traceparent`: the W3C trace context of the input the record came from, when that
  input had one; when two inputs are involved (a late order and its payment, a mismatched
  pair), the one that decided it is the `traceparent`, and `slipguard-links` lists the
  other's, comma-separated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from schemas import MODELS
from schemas.recovery import SCHEMA_VERSION as RECOVERY_VERSION

CONTENT_TYPE = b"application/json"
TRACEPARENT = "traceparent"
LINKS = "slipguard-links"
# name -> current version; a breaking change is a new version on a new topic (README: compatibility)
SCHEMA_VERSIONS = {name: 1 for name in MODELS} | {"recovery": RECOVERY_VERSION}
_NAME = {model: name for name, model in MODELS.items()}
_BASE = {model: [("content-type", CONTENT_TYPE), ("slipguard-type", name.encode()),
                 ("slipguard-schema-version", str(SCHEMA_VERSIONS[name]).encode())]
         for model, name in _NAME.items()}


def headers_for(model: type, traces: Iterable[bytes | None] = ()) -> list[tuple[str, bytes]]:
    """The headers of a record of `model` derived from inputs with these traceparents."""
    headers = list(_BASE[model])
    found = [t for t in traces if t]
    if found:
        headers.append((TRACEPARENT, found[0]))
    if len(found) > 1:
        headers.append((LINKS, b",".join(found[1:])))
    return headers


# W3C trace context, version 00: 55 characters, lowercase hex, ids not all zeros.
_VALID_TRACE = re.compile(rb"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}").fullmatch


def traceparent(headers: Any) -> bytes | None:
    """The traceparent among a record's headers (confluent-kafka's list of pairs), if it
    is a valid one; any other value is dropped, never copied (the contract): a header of
    any size would otherwise be copied onto what slipguard writes, past the broker's limit."""
    if not headers:
        return None
    for key, value in headers:
        if key == TRACEPARENT and value:
            value = value if isinstance(value, bytes) else str(value).encode()
            return value if len(value) == 55 and _VALID_TRACE(value) else None
    return None
