"""What the writer refuses beyond the models (streams/recover/rules.py), through the
writer's own decode (Writer._decode) and the columns it builds for a batch
(store._recovery_columns): no Kafka, no PostgreSQL."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import LateOrder, Recovery, recovery_id_for
from streams.recover.rules import _canonical_uuid
from streams.recover.store import Item, _metadata_json, _recovery_columns
from streams.recover.writer import Record, Writer
from streams.settings import Settings
from tests.factories import T0, order, payment, payment_signed

KEY = b"k" * 32
S = Settings()


def recovery(n: int = 1, **over) -> Recovery:
    p = over.pop("payment", None) or payment(payment_id=f"pay-{n}", order_id=f"ord-{n}")
    fields = dict(recovery_id=recovery_id_for(p.payment_id), order_id=p.order_id, payment=p,
                  deadline=T0 + timedelta(seconds=60), detected_at=T0 + timedelta(seconds=66)) | over
    return Recovery(**fields)


def late(n: int = 1, **over) -> LateOrder:
    fields = dict(order_id=f"ord-{n}", order=order(order_id=f"ord-{n}"), payment_id=f"pay-{n}",
                  recovery_id=recovery_id_for(f"pay-{n}"), lateness_seconds=2.5) | over
    return LateOrder(**fields)


def decode(s: Settings, topic: str, values: list[bytes | None]) -> tuple[list, list]:
    records = [Record(topic, 0, n, None, [], b"k", v) for n, v in enumerate(values)]
    return Writer(s, None)._decode(records)  # type: ignore[arg-type]


def verdicts(recoveries: list[Recovery], keys: tuple[bytes, ...] = ()) -> list[str | None]:
    """Each recovery's rejection reason as the batch would write it (None: inserted)."""
    cols = _recovery_columns([Item("r", 0, n, r) for n, r in enumerate(recoveries)], keys)
    assert cols["accept"] == [reason is None for reason in cols["reason"]]
    return cols["reason"]


def test_an_honest_recovery_and_late_order_are_stored() -> None:
    items, poison = decode(S, S.recovery_topic, [recovery().encode()])
    assert len(items) == 1 and not poison and verdicts([items[0][0].message]) == [None]
    items, poison = decode(S, S.late_topic, [late().encode()])
    assert len(items) == 1 and not poison


@pytest.mark.parametrize("topic", [S.recovery_topic, S.late_topic])
def test_a_tombstone_is_a_dead_letter_that_says_it_had_no_value(topic: str) -> None:
    items, poison = decode(S, topic, [None, recovery().encode() if topic == S.recovery_topic else late().encode()])
    assert len(items) == 1
    [(record, error, summary)] = poison
    assert record.value is None and error == summary
    assert "no value (a tombstone)" in error


@pytest.mark.parametrize("claimed", [str(uuid.uuid4()), recovery_id_for("pay-2")], ids=["random", "another payment's"])
def test_a_recovery_whose_id_is_not_derived_from_its_payment_is_rejected(claimed: str) -> None:
    forged = recovery(recovery_id=claimed)
    items, poison = decode(S, S.recovery_topic, [forged.encode()])
    assert not poison
    [reason] = verdicts([items[0][0].message])
    assert reason is not None and f"recovery_id {claimed} is not the one derived from payment_id pay-1" in reason


def test_a_recovery_id_postgresql_would_read_loosely_is_dead_lettered() -> None:
    """uuid takes hyphens anywhere between groups of four: the derived id in another
    spelling is not the derived id; and 36 hyphens are no UUID at all."""
    real = recovery_id_for("pay-1")
    spelled = real.replace("-", "")
    loose = "-".join(spelled[i:i + 4] for i in range(0, 16, 4)) + "-" + spelled[16:]
    assert len(loose) == 36 and uuid.UUID(loose) == uuid.UUID(real)
    items, poison = decode(S, S.recovery_topic, [recovery(recovery_id=loose).encode(),
                                                 recovery(recovery_id="-" * 36).encode()])
    assert not items
    assert [p[1].split(" is ")[1] for p in poison] == ["not a UUID in canonical form (as recovery_id_for makes it)"] * 2


@pytest.mark.parametrize(("forged", "expected"), [
    (late(recovery_id=recovery_id_for("pay-2")), "recovery_id"),  # would pre-empt pay-2's late order
    (late(recovery_id=str(uuid.uuid4())), "recovery_id"),
    (late(payment_id="pay-2"), "recovery_id"),
    (late(order=order(order_id="ord-2")), "order.order_id"),  # would reconcile ord-1's row with ord-2
    (late(order_id="ord-2", order=order(order_id="ord-1")), "order.order_id"),
], ids=["another payment's recovery_id", "random recovery_id", "another payment_id", "order of another order",
        "order_id of another order"])
def test_a_late_order_with_mismatched_ids_goes_to_the_dlq(forged: LateOrder, expected: str) -> None:
    items, poison = decode(S, S.late_topic, [forged.encode()])
    assert not items and len(poison) == 1
    _, error, summary = poison[0]
    assert "forged or corrupted record, never stored" in error and summary.startswith(expected)


def test_a_minimised_dead_letter_error_names_fields_not_values() -> None:
    s = Settings(minimise_personal_data=True)
    _, poison = decode(s, s.late_topic, [late(order=order(order_id="ord-2")).encode()])
    assert poison[0][1] == "order.order_id: differs from order_id"


def test_every_other_relation_is_still_checked_with_a_key() -> None:
    signed = payment_signed(KEY, order_id="ord-1", payment_id="pay-1")
    ok = recovery(payment=signed)
    cases = [ok, recovery(payment=payment()), recovery(payment=signed.model_copy(update={"amount": Decimal("99")})),
             recovery(payment=payment(status="failed")), recovery(order_id="ord-2", payment=signed)]
    reasons = verdicts(cases, (KEY,))
    assert reasons[0] is None
    assert [r.split(";")[0] for r in reasons[1:]] == [  # type: ignore[union-attr]
        "payment signature missing or invalid", "payment signature missing or invalid",
        "payment status is failed", "recovery order_id ord-2 differs from the payment's ord-1"]


def _canonical_by_parsing(text: str) -> bool:
    """rules._canonical_uuid as it was: the text is what uuid.UUID makes of it."""
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


_HEXISH = st.text(alphabet="0123456789abcdefABCDEF-{}_ x:urn\u0660\u0969", min_size=30, max_size=40)


@given(_HEXISH | st.text(max_size=40) | st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
       | st.uuids().map(lambda u: "{" + str(u) + "}") | st.uuids().map(lambda u: u.hex)
       | st.uuids().map(lambda u: str(u) + "\n") | st.uuids().map(lambda u: "urn:uuid:" + str(u)))
def test_the_canonical_form_is_what_uuid_parsing_would_say(text: str) -> None:
    assert _canonical_uuid(text) == _canonical_by_parsing(text)


_META_VALUES = (st.text(max_size=30) | st.integers(-(2**53 - 1), 2**53 - 1)
                | st.floats(allow_nan=False, allow_infinity=False, min_value=-(2**53 - 1), max_value=2**53 - 1)
                | st.booleans() | st.none())


@given(st.dictionaries(st.text(min_size=1, max_size=20), _META_VALUES, max_size=8)
       | st.just({"bad": "lone \udc80 surrogate"}))
def test_metadata_goes_to_jsonb_as_json_dumps_would_send_it(metadata: dict) -> None:
    """store._metadata_json (msgspec) against json.dumps, what the writer sent before: the
    same keys, strings and numbers (jsonb keeps the number, not its spelling); what msgspec
    refuses is json.dumps' text itself."""
    sent = _metadata_json(metadata)
    as_numbers = {"parse_float": Decimal, "parse_int": Decimal}
    assert json.loads(sent, **as_numbers) == json.loads(json.dumps(metadata), **as_numbers)
    if any("\ud800" <= c <= "\udfff" for v in metadata.values() if isinstance(v, str) for c in v):
        assert sent == json.dumps(metadata)
