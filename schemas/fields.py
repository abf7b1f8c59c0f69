"""Constrained field types shared by every message model.

The rules are the contract's: amounts are decimal strings (never JSON numbers), times
carry an offset, identifiers are bounded and safe to log, currencies are ISO 4217.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import pycountry
from pydantic import AfterValidator, AwareDatetime, Field, PlainSerializer, PlainValidator, WithJsonSchema

MAX_AMOUNT = Decimal("1000000000000")  # 10^12: far above any single stake, far below float trouble
AMOUNT_PLACES = 4
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$"

ISO_4217 = frozenset(c.alpha_3 for c in pycountry.currencies)


_AMOUNT = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,4})?")


def _amount(value: Any) -> Decimal:
    """A positive decimal string, at most 4 places, below 10^12 -> Decimal.

    The common case is one regex match and one Decimal(); the error path says what is
    wrong, without the value (errors reach logs; payment data must not).
    """
    text = format(value, "f") if isinstance(value, Decimal) else value
    if not isinstance(text, str):
        raise ValueError(f"amount must be a decimal string such as \"10.50\", not a JSON {type(value).__name__}")
    if _AMOUNT.fullmatch(text):
        amount = Decimal(text)
        if amount:
            return amount
    raise ValueError(_amount_problem(text))


def _amount_problem(text: str) -> str:
    try:
        amount = Decimal(text)
    except InvalidOperation:
        return "amount must be a decimal string such as \"10.50\""
    if not amount.is_finite():
        return "amount must be a finite decimal"
    if amount <= 0:
        return "amount must be greater than 0"
    if amount >= MAX_AMOUNT:
        return f"amount must be less than {MAX_AMOUNT}"
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > AMOUNT_PLACES:
        return f"amount has more than {AMOUNT_PLACES} decimal places"
    return "amount must be plain digits with an optional decimal point, such as \"10.50\""


# One validator for the whole rule: it is on the join's hot path (two per event).
Amount = Annotated[
    Decimal,
    PlainValidator(_amount),
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="always"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^[0-9]{1,12}(\.[0-9]{1,4})?$",
            "description": "Positive decimal string, at most 4 decimal places, below 10^12. Never a JSON number.",
        }
    ),
]


def _currency(value: str) -> str:
    if value not in ISO_4217:
        raise ValueError("currency must be an ISO 4217 code such as EUR or CNY")
    return value


Currency = Annotated[
    str,
    Field(min_length=3, max_length=3),
    AfterValidator(_currency),
    WithJsonSchema({"type": "string", "pattern": "^[A-Z]{3}$", "description": "ISO 4217 currency code."}),
]

Identifier = Annotated[
    str,
    Field(pattern=ID_PATTERN, description="1-64 characters: letters, digits and . _ : - (not first)."),
]


def _to_utc_iso(value: datetime) -> str:
    return value.isoformat()


Timestamp = Annotated[
    AwareDatetime,
    PlainSerializer(_to_utc_iso, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "description": "RFC 3339 with an offset."}),
]

# Metadata travels into PostgreSQL (jsonb): no NUL characters, no NaN or infinities.
MetaKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00]*$")]
MetaValue = (Annotated[str, Field(max_length=1024, pattern=r"^[^\x00]*$")] | int
             | Annotated[float, Field(allow_inf_nan=False)] | bool | None)
Metadata = Annotated[
    dict[MetaKey, MetaValue],
    Field(max_length=32, description="Flat object of at most 32 keys: game code, round id, and so on."),
]


def epoch_ms(value: datetime) -> int:
    """Integer Unix milliseconds of an aware datetime, without float rounding."""
    delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400_000) + (delta.seconds * 1000) + (delta.microseconds // 1000)


def from_epoch_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
