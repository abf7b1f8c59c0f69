"""Compact pending payments (streams/join/compact.py): what comes back out of one is the
payment the model decoded, field by field, and the entry's header says what was put in."""

from __future__ import annotations

import sys
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import Payment, fast
from streams.join import compact
from tests.schemas.test_fast import _same, payments

TP = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _as_read(p: Payment) -> Payment:
    """A succeeded payment as the join has it: decoded from its record."""
    raw = p.model_copy(update={"status": "succeeded"}).encode()
    return fast.decode(Payment, raw)


@settings(max_examples=400, deadline=None)
@given(payments, st.integers(946_684_800_000, 2**48), st.booleans(),
       st.sampled_from([None, TP, b"x" * 255, b"y" * 256]))
def test_a_payment_comes_back_out_of_its_entry_as_the_model_decoded_it(p: Payment, t: int, late: bool,
                                                                        trace: bytes | None) -> None:
    p = _as_read(p)
    part = compact.pack_payment(p)
    e = compact.entry(t, part, late, trace)
    back = compact.payment(compact.part_of(e), p.order_id)
    # Field by field (types, the time's offset, the amount's digits), and the same encoding;
    # the fields given may differ only by fields that are None (encoded the same: omitted).
    for name in Payment.model_fields:
        _same(getattr(back, name), getattr(p, name), name)
    assert back == p and back.encode() == p.encode()
    assert back.model_fields_set == {k for k in p.model_fields_set if getattr(p, k) is not None}
    kept = trace if trace and len(trace) <= compact.MAX_TRACE else None
    assert (compact.t_of(e), compact.trace_of(e), compact.part_of(e)) == (t, kept, part)
    assert compact.flags_of(e) == compact.COMPACT | late | (compact.TRACE if kept else 0)
    assert compact.cmp_of(part) == (p.user_id, p.amount, p.currency)
    assert compact.payment_id_of(part) == p.payment_id == compact.fields(part)[0]
    persisted = compact.with_flag(e, compact.PERSISTED)
    assert compact.part_of(persisted) == part and compact.trace_of(persisted) == kept


def test_raw_payment_records_are_read_too() -> None:
    """Matched pairs and recovered payments may hold a payment's JSON (from an older release,
    or an order that came first): payment() and payment_id_of() read both forms."""
    raw = (b'{"payment_id":"p-1","order_id":"o-1","user_id":"u","amount":"1.50","currency":"EUR",'
           b'"status":"succeeded","paid_at":"2026-11-27T08:00:00+08:00"}')
    p = Payment.decode(raw)
    assert compact.payment(raw, "o-1") == p and compact.payment_id_of(raw) == "p-1"
    part = compact.pack_payment(p)
    assert part[0] in range(0x90, 0xA0) and raw[0] == ord("{")
    assert compact.payment(part, "o-1").amount.as_tuple() == Decimal("1.50").as_tuple()


def test_an_entry_is_smaller_than_the_record_it_replaces() -> None:
    raw = (b'{"payment_id":"p7-0","order_id":"o7-0","user_id":"u42445","amount":"198.72","currency":"HKD",'
           b'"status":"succeeded","paid_at":"2027-01-15T08:00:00.000+00:00",'
           b'"metadata":{"game":"baccarat","round":30000000}}')
    e = compact.entry(1_800_000_000_000, compact.pack_payment(Payment.decode(raw)))
    assert sys.getsizeof(e) <= sys.getsizeof(raw) // 2


def _part() -> tuple[Payment, bytes]:
    p = _as_read(Payment.decode(
        b'{"payment_id":"p-1","order_id":"o-1","user_id":"u","amount":"12.30","currency":"EUR",'
        b'"status":"succeeded","paid_at":"2026-11-27T08:00:00+08:00"}'))
    return p, compact.pack_payment(p)


def test_an_entry_made_without_flags_is_neither_late_nor_persisted() -> None:
    _, part = _part()
    assert compact.flags_of(compact.entry(1_800_000_000_000, part)) == compact.COMPACT
    assert compact.flags_of(compact.entry(1_800_000_000_000, part, trace=TP)) == compact.COMPACT | compact.TRACE


@pytest.mark.parametrize("trace", [None, TP])
@pytest.mark.parametrize("bit", [compact.LATE, compact.PERSISTED])
def test_a_flag_set_on_a_packed_entry_changes_that_bit_and_nothing_else(trace: bytes | None, bit: int) -> None:
    _, part = _part()
    e = compact.entry(1_800_000_000_000, part, 0, trace)
    flagged = compact.with_flag(e, bit)
    assert compact.flags_of(flagged) == compact.flags_of(e) | bit
    assert (compact.t_of(flagged), compact.trace_of(flagged), compact.part_of(flagged)) == (
        1_800_000_000_000, trace, part)
    assert compact.with_flag(flagged, bit) == flagged == compact.flagged(e, bit)


def test_a_trace_of_any_length_up_to_the_limit_comes_back_out_with_its_payment() -> None:
    p, part = _part()
    for n in range(1, compact.MAX_TRACE + 1):
        trace = bytes(range(n))
        e = compact.entry(1_800_000_000_000, part, compact.LATE, trace)
        assert compact.trace_of(e) == trace and compact.part_of(e) == part, n
        assert compact.payment(compact.part_of(e), "o-1") == p


@pytest.mark.parametrize(("order_over", "kinds"), [
    ({"amount": Decimal("12.3")}, []),  # the same amount, spelled otherwise
    ({"amount": Decimal("12.30")}, []),
    ({"amount": Decimal("11")}, ["amount_mismatch"]),
    ({"amount": Decimal("12.31")}, ["amount_mismatch"]),
    ({"currency": "USD"}, ["currency_mismatch"]),
    ({"user_id": "user-2"}, ["user_mismatch"]),
])
def test_a_payment_packed_at_a_commit_is_compared_with_its_order_as_the_one_read(order_over: dict,
                                                                                   kinds: list[str]) -> None:
    from tests.join.harness import BASE, Harness

    for commit in (False, True):
        h = Harness()
        p = h.pay(BASE, amount=Decimal("12.30"))
        if commit:
            h.commit()
            assert type(h.join.pending["ord-1"]) is bytes
        h.order(BASE + 1, **({"amount": Decimal("12.30")} | order_over))
        out = h.take()
        assert out.matched == 1 and [a.kind for a in out.anomalies] == kinds, commit
        assert all(a.payments == (p,) for a in out.anomalies)
