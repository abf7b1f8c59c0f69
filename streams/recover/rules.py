"""What the recovery writer checks in a record beyond its model: the relations between
its fields that a forged or corrupted record could break to reach the database.

Two verdicts, for two kinds of harm:

* `dead_letter_reason`: the record cannot be stored at all, or storing it could take a
  key an honest record needs. It goes to the DLQ and writes nothing. A late order's
  `recovery_id` is its key in late_orders and what it reconciles: one not derived from
  its `payment_id`, or an `order` of another order than its `order_id`, would pre-empt
  or reconcile another payment's row.
* `rejection`: a recovery that decodes but must not be inserted. It gets an audit row
  with outcome `rejected` and this reason (recovery_audit keeps rejected rows apart from
  written outcomes, so a forged record naming a real recovery's id never takes that
  recovery's audit row: migration 0002).
"""

from __future__ import annotations

import re

from schemas import LateOrder, Recovery, recovery_id_for

# str(uuid.UUID(text)) == text, without the UUID: the canonical form is exactly lowercase
# hex digits in groups of 8-4-4-4-12 (tests/recover/test_rules.py compares the two).
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch


def _canonical_uuid(text: str) -> bool:
    """PostgreSQL's uuid type reads looser forms too (hyphens elsewhere, braces); only the
    canonical form is compared with the derived id, so only it may be stored."""
    return _CANONICAL_UUID(text) is not None


def dead_letter_reason(message: Recovery | LateOrder) -> tuple[str, str] | None:
    """Why a decoded record goes to the DLQ instead of the database, or None: (the error,
    and the same naming fields only, never values, for logs and minimised dead letters)."""
    if not _canonical_uuid(message.recovery_id):
        return (f"recovery_id {message.recovery_id} is not a UUID in canonical form (as recovery_id_for makes it)",
                "recovery_id: not a UUID in canonical form")
    if isinstance(message, LateOrder):
        if message.order.order_id != message.order_id:
            return ((f"late order's order_id {message.order_id} differs from its order's {message.order.order_id}: "
                     "a forged or corrupted record, never stored"), "order.order_id: differs from order_id")
        derived = recovery_id_for(message.payment_id)
        if message.recovery_id != derived:
            return ((f"late order's recovery_id {message.recovery_id} is not the one derived from its payment_id "
                     f"{message.payment_id} ({derived}): a forged or corrupted record, never stored"),
                    "recovery_id: not the one derived from payment_id")
    return None


def rejection(r: Recovery, hmac_keys: tuple[bytes, ...] | None) -> str | None:
    """Why a recovery is not inserted (recorded in its audit row), or None."""
    p = r.payment
    derived = recovery_id_for(p.payment_id)
    if r.recovery_id != derived:
        return (f"recovery_id {r.recovery_id} is not the one derived from payment_id {p.payment_id} ({derived}): "
                "a forged or corrupted record")
    if p.status != "succeeded":
        return f"payment status is {p.status}; only succeeded payments are recovered"
    if hmac_keys and not p.signature_valid(hmac_keys):
        return "payment signature missing or invalid"
    if p.order_id != r.order_id:
        return f"recovery order_id {r.order_id} differs from the payment's {p.order_id}"
    return None
