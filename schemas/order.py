"""The `orders` topic: an order (bet slip, 注单) as the order service publishes it."""

from __future__ import annotations

from typing import ClassVar

from schemas.base import Message
from schemas.fields import Amount, Currency, Identifier, Metadata, Timestamp


class Order(Message):
    flat_but_metadata: ClassVar[bool] = True

    order_id: Identifier
    user_id: Identifier
    amount: Amount
    currency: Currency
    created_at: Timestamp
    metadata: Metadata | None = None
