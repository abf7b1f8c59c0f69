"""The `orders` topic: an order (bet slip, 注单) as the order service publishes it."""

from __future__ import annotations

from schemas.base import Message
from schemas.fields import Amount, Currency, Identifier, Metadata, Timestamp


class Order(Message):
    order_id: Identifier
    user_id: Identifier
    amount: Amount
    currency: Currency
    created_at: Timestamp
    metadata: Metadata | None = None
