"""The `payments.anomalies` topic."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.base import Message
from schemas.fields import Identifier, Timestamp
from schemas.order import Order
from schemas.payment import Payment

AnomalyKind = Literal["amount_mismatch", "currency_mismatch", "user_mismatch", "duplicate_payment", "bad_signature",
                      "paid_at_skew"]


class Anomaly(Message):
    kind: AnomalyKind
    order_id: Identifier
    payments: list[Payment] = Field(min_length=1, max_length=2)
    order: Order | None = None
    detected_at: Timestamp
