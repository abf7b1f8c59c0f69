"""A faster decoder for the messages on the hot paths (the join's payments and orders,
the writer's recoveries), in front of the models.

The models stay the contract. `decode(cls, raw)` first tries a fast path (msgspec's
native JSON parser into plain types, then the models' own field rules in a few
direct calls) and returns its instance only when that path is sure of it; in every
other case (anything unusual: extra fields, escapes that make a key count unsure, any
value the fast path does not check as the model does) it asks the model, which accepts
or says why not. So what is accepted or rejected, and every error message, is the
model's: the fast path can only be stricter, never looser.
tests/schemas/test_fast.py checks, on generated and adversarial records, that every
record the fast path accepts is one the model accepts with the same values, field by
field, and that it does accept the ordinary ones (or it would be no faster).

Nesting: the fast types hold no nested containers except the flat `metadata` (and a
recovery's payment), and unknown fields are refused before their value is read, so
msgspec never recurses into a hostile record's depth; the model path has its own limit.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar, cast

import msgspec
from msgspec import UNSET, UnsetType

from schemas.base import Message
from schemas.fields import _AMOUNT, ID_PATTERN, ISO_4217, RFC3339, SAFE_INT
from schemas.order import Order
from schemas.payment import Payment
from schemas.recovery import Recovery

M = TypeVar("M", bound=Message)

# The models' patterns have Rust-regex semantics (`$` is the end of the text): fullmatch.
_ID_RULE = ID_PATTERN.removeprefix("^").removesuffix("$")
_ID = re.compile(_ID_RULE).fullmatch
_TIME = re.compile(RFC3339.removeprefix("^").removesuffix("$")).fullmatch
_SIGNATURE = re.compile(r"[0-9a-f]{64}").fullmatch
_RECOVERY_ID = re.compile(r"[0-9a-f-]{36}").fullmatch
_IDS = re.compile("\n".join([_ID_RULE] * 3)).fullmatch  # three identifiers, a newline between (never in one)
_IDS2 = re.compile("\n".join([_ID_RULE] * 2)).fullmatch
_AMOUNT_TEXT = _AMOUNT.fullmatch
_STATUS = frozenset({"succeeded", "failed"})
# Each currency as one shared string: a pending payment or waiting order then keeps no copy
# of its own (about 50 bytes each).
_CURRENCY = {c: c for c in ISO_4217}
_PAYMENT_GIVEN = ("payment_id", "order_id", "user_id", "amount", "currency", "status", "paid_at")
_ORDER_GIVEN = ("order_id", "user_id", "amount", "currency", "created_at")
_RECOVERY_GIVEN = ("recovery_id", "order_id", "payment", "deadline", "detected_at")
assert all(len(c) == 3 for c in ISO_4217)  # the model's 3-character bound is implied by membership

MetaValue = str | int | float | bool | None
Meta = dict[str, MetaValue] | None | UnsetType


class _Payment(msgspec.Struct, forbid_unknown_fields=True):
    payment_id: str
    order_id: str
    user_id: str
    amount: str
    currency: str
    status: str
    paid_at: str
    metadata: Meta = UNSET
    signature: str | UnsetType | None = UNSET


class _Order(msgspec.Struct, forbid_unknown_fields=True):
    order_id: str
    user_id: str
    amount: str
    currency: str
    created_at: str
    metadata: Meta = UNSET


class _Recovery(msgspec.Struct, forbid_unknown_fields=True):
    recovery_id: str
    order_id: str
    payment: _Payment
    deadline: str
    detected_at: str
    reason: str | UnsetType = UNSET
    schema_version: int | UnsetType = UNSET


_DECODE_PAYMENT = msgspec.json.Decoder(_Payment).decode
_DECODE_ORDER = msgspec.json.Decoder(_Order).decode
_DECODE_RECOVERY = msgspec.json.Decoder(_Recovery).decode
_new = object.__new__
_set = object.__setattr__


def _build(cls: type[M], values: dict[str, Any], given: set[str]) -> M:
    """The instance pydantic builds after validating (as in BaseModel.model_construct:
    the same four attributes), without validating again."""
    m = _new(cls)
    _set(m, "__dict__", values)
    _set(m, "__pydantic_fields_set__", given)
    _set(m, "__pydantic_extra__", None)
    _set(m, "__pydantic_private__", None)
    return m


def _metadata(meta: dict[str, Any]) -> int:
    """How many strings a flat metadata object holds (its keys and string values), as
    the model accepts it; -1 if the model might not."""
    if len(meta) > 32:
        return -1
    strings = len(meta)
    for k, v in meta.items():
        if not 0 < len(k) <= 64 or "\x00" in k:
            return -1
        t = v.__class__
        if t is str:
            if len(v) > 1024 or "\x00" in v:
                return -1
            strings += 1
        elif t is int:
            if not -SAFE_INT <= v <= SAFE_INT:
                return -1
        elif t is float:
            if not (math.isfinite(v) and -SAFE_INT <= v <= SAFE_INT):
                return -1
        elif t is not bool and v is not None:
            return -1
    return strings


def _given_metadata(meta: Any, given: set[str]) -> tuple[dict[str, Any] | None, int]:
    """The metadata as the model keeps it, and how many strings its key and object add to
    the text (-1: unsure); notes it in `given` if the text has it."""
    if meta is UNSET:
        return None, 0
    given.add("metadata")
    if meta is None:
        return None, 1
    n = _metadata(meta)
    return meta, (n + 1 if n >= 0 else -1)


def _payment(p: _Payment) -> tuple[Payment, int] | None:
    """The Payment, and how many strings (keys and string values) its JSON text holds
    when no key is repeated; None if unsure."""
    if _IDS(f"{p.payment_id}\n{p.order_id}\n{p.user_id}") is None or _AMOUNT_TEXT(p.amount) is None:
        return None
    amount = Decimal(p.amount)
    currency = _CURRENCY.get(p.currency)
    if not amount or currency is None or p.status not in _STATUS or _TIME(p.paid_at) is None:
        return None
    paid_at = datetime.fromisoformat(p.paid_at)  # a ValueError (Feb 30) is the caller's "unsure"
    strings = 14  # seven keys, seven string values
    given = set(_PAYMENT_GIVEN)
    meta, n = _given_metadata(p.metadata, given)
    if n < 0:
        return None
    strings += n
    signature = p.signature
    if signature is UNSET:
        signature = None
    else:
        given.add("signature")
        strings += 1
        if signature is not None:
            if _SIGNATURE(signature) is None:
                return None
            strings += 1
    return _build(Payment, {"payment_id": p.payment_id, "order_id": p.order_id, "user_id": p.user_id,
                            "amount": amount, "currency": currency, "status": p.status, "paid_at": paid_at,
                            "metadata": meta, "signature": signature}, given), strings


def _no_repeated_keys(raw: bytes, strings: int) -> bool:
    """No key of the text is repeated (schemas.base.check_no_duplicate_keys), when the text
    has exactly two quote characters per string kept. Sound: every value in the text was
    decoded against a scalar type or the one known nested object, so each string in the
    text is a key or a string value, and each holds two quotes plus one per escaped quote;
    a repeated key adds a string, so its two quotes more."""
    return raw.count(b'"') == 2 * strings


def payment(raw: bytes) -> Payment | None:
    """`raw` as the Payment the model would make of it, or None: ask the model."""
    try:
        made = _payment(_DECODE_PAYMENT(raw))
    except (msgspec.MsgspecError, ValueError, TypeError):
        return None
    if made is None or not _no_repeated_keys(raw, made[1]):
        return None
    return made[0]


def order(raw: bytes) -> Order | None:
    """`raw` as the Order the model would make of it, or None: ask the model."""
    try:
        o = _DECODE_ORDER(raw)
        currency = _CURRENCY.get(o.currency)
        if (_IDS2(f"{o.order_id}\n{o.user_id}") is None or currency is None
                or _AMOUNT_TEXT(o.amount) is None or _TIME(o.created_at) is None):
            return None
        amount = Decimal(o.amount)
        created_at = datetime.fromisoformat(o.created_at)
    except (msgspec.MsgspecError, ValueError, TypeError):
        return None
    if not amount:
        return None
    given = set(_ORDER_GIVEN)
    meta, n = _given_metadata(o.metadata, given)
    if n < 0 or not _no_repeated_keys(raw, 10 + n):  # five keys, five string values, and the metadata's
        return None
    return _build(Order, {"order_id": o.order_id, "user_id": o.user_id, "amount": amount, "currency": currency,
                          "created_at": created_at, "metadata": meta}, given)


def recovery(raw: bytes) -> Recovery | None:
    """`raw` as the Recovery the model would make of it, or None: ask the model."""
    try:
        return _recovery(raw)
    except (msgspec.MsgspecError, ValueError, TypeError):
        return None


def _recovery(raw: bytes) -> Recovery | None:
    r = _DECODE_RECOVERY(raw)
    if _RECOVERY_ID(r.recovery_id) is None or _ID(r.order_id) is None:
        return None
    made = _payment(r.payment)
    if made is None or _TIME(r.deadline) is None or _TIME(r.detected_at) is None:
        return None
    deadline, detected_at = datetime.fromisoformat(r.deadline), datetime.fromisoformat(r.detected_at)
    strings = 9 + made[1]  # five keys, four string values, and the payment's
    given = set(_RECOVERY_GIVEN)
    if r.reason is not UNSET:
        if r.reason != "order_missing":
            return None
        given.add("reason")
        strings += 2
    if r.schema_version is not UNSET:
        if r.schema_version.__class__ is not int or r.schema_version != 1:
            return None
        given.add("schema_version")
        strings += 1
    if not _no_repeated_keys(raw, strings):
        return None
    return _build(Recovery, {"recovery_id": r.recovery_id, "order_id": r.order_id, "reason": "order_missing",
                             "payment": made[0], "deadline": deadline, "detected_at": detected_at,
                             "schema_version": 1}, given)


FAST: dict[type, Any] = {Payment: payment, Order: order, Recovery: recovery}


def decode(cls: type[M], raw: bytes) -> M:
    """`cls.decode(raw)`, faster for the models with a fast path: the same instance, or the
    same error (pydantic.ValidationError or DuplicateKeyError) from the model itself."""
    fast = FAST.get(cls)
    if fast is not None:
        made = fast(raw)
        if made is not None:
            return cast(M, made)
    return cls.decode(raw)
