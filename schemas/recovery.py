"""The `orders.recovery` topic: a paid order that did not come back in time."""

from __future__ import annotations

import hashlib
import uuid
from typing import Literal

from pydantic import Field

from schemas.base import Message
from schemas.fields import Identifier, Timestamp
from schemas.payment import Payment

SCHEMA_VERSION: Literal[1] = 1
_RECOVERY_NAMESPACE = uuid.UUID("6f1b8f5e-2f4a-4f55-9a4e-5c1a9d3e7b21")


_NAMESPACED = hashlib.sha1(_RECOVERY_NAMESPACE.bytes)  # uuid5's hash, the namespace already in it
_VARIANT = "89ab"  # the high hex digit of byte 8: RFC 4122's variant bits (10) over the hash's two low bits


def recovery_id_for(payment_id: str) -> str:
    """Deterministic: every emission for one payment, on any worker, carries the same id.

    `str(uuid.uuid5(namespace, payment_id))`, spelled out: the SHA-1 of the namespace's bytes
    and the id's UTF-8 (strict, as uuid5's), its first 16 bytes with version 5 and the RFC
    4122 variant set, in canonical form. A third of uuid5's time without the UUID object:
    the writer derives it once per recovery (rules.rejection). Tested against uuid5."""
    h = _NAMESPACED.copy()
    h.update(payment_id.encode("utf-8"))
    x = h.hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[int(x[16], 16) & 3]}{x[17:20]}-{x[20:32]}"


class Recovery(Message):
    recovery_id: str = Field(pattern=r"^[0-9a-f-]{36}$")
    order_id: Identifier
    reason: Literal["order_missing"] = "order_missing"
    payment: Payment
    deadline: Timestamp
    detected_at: Timestamp
    schema_version: Literal[1] = SCHEMA_VERSION
