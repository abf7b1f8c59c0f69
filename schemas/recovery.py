"""The `orders.recovery` topic: a paid order that did not come back in time."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import Field

from schemas.base import Message
from schemas.fields import Identifier, Timestamp
from schemas.payment import Payment

SCHEMA_VERSION: Literal[1] = 1
_RECOVERY_NAMESPACE = uuid.UUID("6f1b8f5e-2f4a-4f55-9a4e-5c1a9d3e7b21")


def recovery_id_for(payment_id: str) -> str:
    """Deterministic: every emission for one payment, on any worker, carries the same id."""
    return str(uuid.uuid5(_RECOVERY_NAMESPACE, payment_id))


class Recovery(Message):
    recovery_id: str = Field(pattern=r"^[0-9a-f-]{36}$")
    order_id: Identifier
    reason: Literal["order_missing"] = "order_missing"
    payment: Payment
    deadline: Timestamp
    detected_at: Timestamp
    schema_version: Literal[1] = SCHEMA_VERSION
