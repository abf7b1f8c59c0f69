"""The `orders.late` topic: a real order for a payment that is (or will be) recovered."""

from __future__ import annotations

from pydantic import Field

from schemas.base import Message
from schemas.fields import Identifier
from schemas.order import Order


class LateOrder(Message):
    order_id: Identifier
    order: Order
    payment_id: Identifier
    recovery_id: str = Field(pattern=r"^[0-9a-f-]{36}$")
    lateness_seconds: float = Field(
        ge=0, description="Order event time minus the payment's deadline, or 0 if not past it.")
