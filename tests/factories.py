"""Valid messages for tests, with every field overridable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from schemas import Order, Payment

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def payment(**over: Any) -> Payment:
    fields: dict[str, Any] = dict(
        payment_id="pay-1", order_id="ord-1", user_id="user-1", amount=Decimal("10.50"), currency="CNY",
        status="succeeded", paid_at=T0, metadata={"game": "baccarat", "round": 7},
    )
    fields.update(over)
    return Payment(**fields)


def order(**over: Any) -> Order:
    fields: dict[str, Any] = dict(
        order_id="ord-1", user_id="user-1", amount=Decimal("10.50"), currency="CNY",
        created_at=T0 + timedelta(seconds=1),
    )
    fields.update(over)
    return Order(**fields)


def payment_signed(key: bytes, **over: Any) -> Payment:
    """A payment with a valid signature for `key` (the payment_id defaults to pay-<order_id>)."""
    over.setdefault("payment_id", f"pay-{over.get('order_id', 'ord-1')}")
    unsigned = payment(**over)
    return unsigned.model_copy(update={"signature": unsigned.expected_signature(key)})
