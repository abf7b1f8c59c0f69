"""Constrained field types shared by every message model.

The rules are the contract's: amounts are decimal strings (never JSON numbers), times
carry an offset, identifiers are bounded and safe to log, currencies are ISO 4217.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import pycountry
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
)

MAX_AMOUNT = Decimal("1000000000000")  # 10^12: far above any single stake, far below float trouble
AMOUNT_PLACES = 4
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$"

# Codes that are not money a customer pays with: testing and "no currency" codes, precious
# metals, bond-market units, and the IMF/ADB accounting units.
NOT_MONEY = frozenset({"XXX", "XTS", "XAU", "XAG", "XPT", "XPD", "XBA", "XBB", "XBC", "XBD", "XDR", "XSU", "XUA"})
ISO_4217 = frozenset(c.alpha_3 for c in pycountry.currencies) - NOT_MONEY


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
            "pattern": r"^(?=[0-9.]*[1-9])[0-9]{1,12}(\.[0-9]{1,4})?$",
            "description": "Positive decimal string, at most 4 decimal places, below 10^12. Never a JSON number.",
        }
    ),
]


def _currency(value: str) -> str:
    if value not in ISO_4217:
        raise ValueError("currency must be an ISO 4217 code of a real currency, such as EUR or CNY")
    return value


Currency = Annotated[
    str,
    Field(min_length=3, max_length=3),
    AfterValidator(_currency),
    WithJsonSchema({"type": "string", "enum": sorted(ISO_4217),
                    "description": "ISO 4217 code of a real currency (not XXX, XTS, metals or units of account)."}),
]

Identifier = Annotated[
    str,
    Field(pattern=ID_PATTERN, description="1-64 characters: letters, digits and . _ : - (not first)."),
]


def _to_utc_iso(value: datetime) -> str:
    return value.isoformat()


# RFC 3339 date-time with an offset, as text only: pydantic would also take Unix numbers
# and digit strings, which JSON Schema's date-time does not, and which hide unit mistakes.
RFC3339 = (r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
           r"(\.[0-9]{1,6})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")
_RFC3339 = re.compile(RFC3339)


def _rfc3339_text(value: Any) -> Any:
    if isinstance(value, datetime):  # built in Python, not parsed from a record
        return value
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("time must be an RFC 3339 string with an offset, such as 2026-11-25T12:00:00Z")
    return value


Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339_text),
    PlainSerializer(_to_utc_iso, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339,
                    "description": "RFC 3339 with an offset (a string; never a number)."}),
]

# Metadata travels into PostgreSQL (jsonb): no NUL characters, no NaN or infinities.
MetaKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00]*$")]
# Numbers within what every JSON reader holds exactly (IEEE doubles: +-(2^53 - 1)).
SAFE_INT = 2**53 - 1
MetaValue = (Annotated[str, Field(max_length=1024, pattern=r"^[^\x00]*$")]
             | Annotated[int, Field(ge=-SAFE_INT, le=SAFE_INT)]
             | Annotated[float, Field(allow_inf_nan=False, ge=-SAFE_INT, le=SAFE_INT)] | bool | None)
Metadata = Annotated[
    dict[MetaKey, MetaValue],
    Field(max_length=32, description="Flat object of at most 32 keys: game code, round id, and so on."),
]


def epoch_ms(value: datetime) -> int:
    """Integer Unix milliseconds of an aware datetime, without float rounding."""
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400_000) + (delta.seconds * 1000) + (delta.microseconds // 1000)


def from_epoch_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
