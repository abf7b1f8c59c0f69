"""The native record path (native/, slipguard_native) held to the Python one: built here,
the same currencies, the same compact entries. The decoder's differential tests are in
tests/schemas/test_fast.py (every generated, mutated and hostile record there is decided by
the native decoder too, whose answer must be "unsure" or the model's very values)."""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import Payment
from schemas.fields import ISO_4217
from streams.join import compact
from tests.schemas.test_fast import NATIVE, payments

needs_native = pytest.mark.skipif(NATIVE is None, reason="slipguard_native not built (no cargo)")


def test_the_native_core_is_built_where_cargo_is() -> None:
    """`make venv` builds it with cargo; a machine with cargo and no native module is a
    broken install, not a Python-only one."""
    if shutil.which("cargo") is not None:
        assert NATIVE is not None, "cargo is here but slipguard_native is not installed: run `make venv`"


@needs_native
def test_the_native_currencies_are_the_models() -> None:
    assert set(NATIVE.CURRENCIES) == ISO_4217 and list(NATIVE.CURRENCIES) == sorted(ISO_4217)


@needs_native
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(payments.filter(lambda p: p.status == "succeeded"), st.integers(946_684_800_000, 2**48),
       st.sampled_from([0, compact.LATE, compact.PERSISTED, compact.LATE | compact.PERSISTED]),
       st.none() | st.sampled_from([b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01", b"t" * 255, b"x" * 256]))
def test_a_native_compact_entry_is_byte_for_byte_the_pythons(p: Payment, t: int, flags: int,
                                                               trace: bytes | None) -> None:
    raw = p.encode()
    want = compact.entry(t, compact.pack_payment(p), flags, trace)
    assert NATIVE.pack_payment(raw, t, flags, trace) == want


@needs_native
@pytest.mark.parametrize("text", ["10.50", "10.00", "007.5", "0.10", "100", "0.0001", "999999999999.9999", "1"])
def test_the_plain_amount_is_the_signing_strings(text: str) -> None:
    from decimal import Decimal

    assert NATIVE.plain_amount(text) == format(Decimal(text).normalize(), "f")
