"""The `payments` topic."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field

from schemas.base import Message
from schemas.fields import Amount, Currency, Identifier, Metadata, Timestamp, epoch_ms

PaymentStatus = Literal["succeeded", "failed"]


class Payment(Message):
    flat_but_metadata: ClassVar[bool] = True

    payment_id: Identifier
    order_id: Identifier
    user_id: Identifier
    amount: Amount
    currency: Currency
    status: PaymentStatus
    paid_at: Timestamp
    metadata: Metadata | None = None
    signature: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    def signing_string(self) -> str:
        """`payment_id|order_id|user_id|amount|currency|status|paid_at_ms`, as the contract says."""
        amount = format(self.amount.normalize(), "f")
        return "|".join((
            self.payment_id, self.order_id, self.user_id, amount, self.currency, self.status,
            str(epoch_ms(self.paid_at)),
        ))

    def expected_signature(self, key: bytes) -> str:
        return hmac.new(key, self.signing_string().encode("utf-8"), hashlib.sha256).hexdigest()

    def signature_valid(self, keys: bytes | Sequence[bytes]) -> bool:
        """Signed with `keys` (one key, or the current and previous ones during a rotation)."""
        if self.signature is None:
            return False
        text = self.signing_string().encode("utf-8")
        for key in (keys,) if isinstance(keys, bytes) else keys:
            if hmac.compare_digest(self.signature, hmac.new(key, text, hashlib.sha256).hexdigest()):
                return True
        return False
