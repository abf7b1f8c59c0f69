"""Message models: round trips, strict validation, signatures, and committed JSON Schemas."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, timedelta, timezone
from decimal import Decimal

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import MODELS, Anomaly, DeadLetter, LateOrder, Order, Payment, Recovery, recovery_id_for
from schemas.fields import ISO_4217, epoch_ms
from schemas.jsonschema import JSON_DIR, render
from tests.factories import T0, order, payment

ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}\Z")
amounts = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("999999999999.9999"), places=4)
currencies = st.sampled_from(sorted(ISO_4217))
times = st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5))]))

payments = st.builds(
    Payment, payment_id=ids, order_id=ids, user_id=ids, amount=amounts, currency=currencies,
    status=st.sampled_from(["succeeded", "failed"]), paid_at=times,
    metadata=st.none() | st.dictionaries(
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=8),
        st.integers(-(2**53 - 1), 2**53 - 1)
        | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8),
        max_size=4),
)
orders = st.builds(Order, order_id=ids, user_id=ids, amount=amounts, currency=currencies, created_at=times)


@given(payments)
def test_payment_round_trips_through_bytes(p: Payment) -> None:
    assert Payment.decode(p.encode()) == p


@given(orders)
def test_order_round_trips_through_bytes(o: Order) -> None:
    assert Order.decode(o.encode()) == o


@given(payments)
def test_encoded_payment_satisfies_committed_json_schema(p: Payment) -> None:
    schema = json.loads((JSON_DIR / "payment.schema.json").read_text())
    jsonschema.validate(json.loads(p.encode()), schema)


def test_amount_is_encoded_as_a_decimal_string_never_a_number() -> None:
    body = json.loads(payment(amount=Decimal("10.50")).encode())
    assert body["amount"] == "10.50"


def test_output_messages_round_trip() -> None:
    p = payment()
    rec = Recovery(recovery_id=recovery_id_for(p.payment_id), order_id=p.order_id, payment=p,
                   deadline=T0 + timedelta(seconds=60), detected_at=T0 + timedelta(seconds=66))
    late = LateOrder(order_id="ord-1", order=order(), payment_id="pay-1", recovery_id=rec.recovery_id,
                     lateness_seconds=3.5)
    anomaly = Anomaly(kind="amount_mismatch", order_id="ord-1", payments=[p], order=order(), detected_at=T0)
    dead = DeadLetter(source_topic="payments", partition=0, offset=7, key_b64=DeadLetter.b64(b"k"),
                      value_b64=DeadLetter.b64(b"\xff"), error="bad", failed_at=T0)
    for msg in (rec, late, anomaly, dead):
        assert type(msg).decode(msg.encode()) == msg


def test_recovery_id_is_deterministic_per_payment() -> None:
    assert recovery_id_for("pay-1") == recovery_id_for("pay-1")
    assert recovery_id_for("pay-1") != recovery_id_for("pay-2")
    assert recovery_id_for("pay-1") == "d381d317-e514-53a8-ae4a-fc763ebe4db1"  # every release's, and the join's


_NAMESPACE = uuid.UUID("6f1b8f5e-2f4a-4f55-9a4e-5c1a9d3e7b21")


@given(st.text(max_size=80) | st.sampled_from(["", "pay-1", "é" * 40, "\u4e2d\u6587", "x" * 500, "pay-\udc80"]))
def test_recovery_id_is_uuid5_of_the_payment_id(payment_id: str) -> None:
    """recovery_id_for spells uuid5 out (a third of its time): the same id for every text,
    and the same error for one UTF-8 cannot encode (a lone surrogate)."""
    try:
        expected = str(uuid.uuid5(_NAMESPACE, payment_id))
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            recovery_id_for(payment_id)
        return
    assert recovery_id_for(payment_id) == expected


def _raw(**over: object) -> bytes:
    body = json.loads(payment().encode())
    body.update(over)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("amount", 10.5, "decimal string"),
        ("amount", "0", "greater than 0"),
        ("amount", "-1", "greater than 0"),
        ("amount", "1.23456", "more than 4 decimal places"),
        ("amount", "1000000000000", "less than"),
        ("amount", "1e3", "plain digits"),
        ("amount", " 1", "plain digits"),
        ("amount", "NaN", "finite"),
        ("amount", "ten", "decimal"),
        ("currency", "XXY", "ISO 4217"),
        ("currency", "eur", "ISO 4217"),
        ("status", "refunded", "'succeeded' or 'failed'"),
        ("paid_at", "2026-11-25T12:00:00", "RFC 3339"),
        ("paid_at", "yesterday", "RFC 3339"),
        ("paid_at", 1_764_072_000, "RFC 3339"),
        ("paid_at", "1764072000", "RFC 3339"),
        ("currency", "XXX", "real currency"),
        ("currency", "XAU", "real currency"),
        ("metadata", {"n": 2**53}, "less than or equal to 9007199254740991"),
        ("order_id", "", "pattern"),
        ("order_id", "x" * 65, "pattern"),
        ("order_id", "ord 1; drop table", "pattern"),
        ("user_id", ..., "Field required"),
        ("signature", "ABC", "pattern"),
        ("metadata", {"round": float("nan")}, "finite"),
        ("metadata", {"note": "a\u0000b"}, "pattern"),
        ("metadata", {"": 1}, "at least 1 character"),
    ],
)
def test_bad_payment_field_is_rejected_with_a_useful_message(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        Payment.decode(_raw(**{field: value}))
    text = str(info.value)
    assert field in text and message in text


def test_unknown_fields_from_producers_are_ignored_not_fatal() -> None:
    assert Payment.decode(_raw(new_field="x")) == payment()


def test_invalid_json_is_rejected() -> None:
    with pytest.raises(ValidationError):
        Payment.decode(b"\xff{not json")


def test_signature_follows_the_contract_string() -> None:
    p = payment(amount=Decimal("10.50"), paid_at=T0.astimezone(timezone(timedelta(hours=8))))
    expected_string = f"pay-1|ord-1|user-1|10.5|CNY|succeeded|{epoch_ms(T0)}"
    assert p.signing_string() == expected_string
    assert payment(amount=Decimal("10.00")).signing_string().split("|")[3] == "10"
    key = b"secret"
    sig = hmac.new(key, expected_string.encode(), hashlib.sha256).hexdigest()
    assert payment(signature=sig).signature_valid(key)
    assert not payment(signature=sig, amount=Decimal("10.51")).signature_valid(key)
    assert not payment().signature_valid(key)


def test_epoch_ms_is_exact() -> None:
    assert epoch_ms(T0) == 1_795_608_000_000
    assert epoch_ms(T0 + timedelta(microseconds=999)) == 1_795_608_000_000
    assert epoch_ms(T0 - timedelta(microseconds=1)) == 1_795_607_999_999


@pytest.mark.parametrize("name", sorted(MODELS))
def test_committed_json_schema_matches_the_model(name: str) -> None:
    committed = (JSON_DIR / f"{name}.schema.json").read_text(encoding="utf-8")
    assert committed == render(name), f"schemas/json/{name}.schema.json drifted: run `make schemas`"


def test_a_dead_letter_of_a_huge_record_is_bounded_and_says_what_it_dropped() -> None:
    import base64
    import hashlib
    from datetime import datetime

    from schemas.dlq import VALUE_PREFIX, DeadLetter

    value = bytes(range(256)) * 3_200  # 800 KiB
    key = b"k" * 10_000
    headers = [(f"h{i}", b"v" * 5_000) for i in range(100)]
    dead = DeadLetter.of(topic="payments", partition=3, offset=42, timestamp_ms=1_700_000_000_000, headers=headers,
                         key=key, value=value, error="bad\nrecord", failed_at=datetime.now(UTC))
    encoded = dead.encode()
    assert len(encoded) < 200_000, "fits any broker's 1 MB limit with room to spare"
    back = DeadLetter.decode(encoded)
    assert back.value_truncated and back.value_size == len(value)
    assert back.value_sha256 == hashlib.sha256(value).hexdigest()
    assert base64.b64decode(back.value_b64) == value[:VALUE_PREFIX]
    assert back.key_truncated and back.key_size == len(key)
    assert len(back.headers) == 64 and all(h.truncated for h in back.headers)
    assert back.timestamp_ms == 1_700_000_000_000 and back.error == "bad | record"


def test_a_dead_letter_of_a_small_record_keeps_it_whole() -> None:
    import base64
    from datetime import datetime

    from schemas.dlq import DeadLetter

    dead = DeadLetter.of(topic="orders", partition=0, offset=1, timestamp_ms=-1, headers=[("traceparent", b"00-ab")],
                         key=b"o1", value=b"{not json", error="x", failed_at=datetime.now(UTC))
    assert base64.b64decode(dead.value_b64) == b"{not json" and not dead.value_truncated and dead.value_size is None
    assert dead.timestamp_ms is None and dead.headers[0].key == "traceparent"


def test_a_minimised_dead_letter_keeps_the_record_without_its_metadata_and_cannot_be_replayed_as_is() -> None:
    import base64
    import hashlib
    import json
    from datetime import datetime

    from schemas.dlq import DeadLetter
    from streams.ops.dlq import Letter, replayable

    raw = b'{"payment_id":"p1","user_id":"u-7","metadata":{"phone":"138-0000","game":"\xe7\x99\xbe"},"amount":"x"}'
    dead = DeadLetter.of(topic="payments", partition=0, offset=5, timestamp_ms=1, headers=None, key=b"o1", value=raw,
                         error="amount: bad", failed_at=datetime.now(UTC), minimise=True)
    back = DeadLetter.decode(dead.encode())
    kept = json.loads(base64.b64decode(back.value_b64))
    assert kept == {"payment_id": "p1", "user_id": "u-7", "amount": "x"} and back.value_redacted
    assert back.value_size == len(raw) and back.value_sha256 == hashlib.sha256(raw).hexdigest()
    assert b"138-0000" not in dead.encode()
    not_json = DeadLetter.of(topic="payments", partition=0, offset=6, timestamp_ms=1, headers=None, key=None,
                             value=b'{"metadata": {"phone": "138-0000"', error="e",
                             failed_at=datetime.now(UTC), minimise=True)
    assert not_json.value_b64 is None and not_json.value_redacted and b"138" not in not_json.encode()
    assert "metadata" in replayable(Letter(partition=0, offset=5, dead=back))
    plain = DeadLetter.of(topic="payments", partition=0, offset=5, timestamp_ms=1, headers=None, key=b"o1", value=raw,
                          error="e", failed_at=datetime.now(UTC))
    assert base64.b64decode(plain.value_b64) == raw and not plain.value_redacted


# ---------------------------------------------------------------- models and JSON Schemas agree

_ADVERSARIAL: dict[str, list[object]] = {
    "payment_id": ["p-1", "", "x" * 64, "x" * 65, "-p", "p 1", "p\u00e9", 7, None, ["p"]],
    "order_id": ["o-1", "o:1.2_3", "", "o/1", 1.5, True],
    "user_id": ["u-1", "U", "u" * 65, {}],
    "amount": ["10.50", "0.0001", "999999999999.9999", "1000000000000", "0", "0.0000", "-1", "10.12345", "1e3",
               "10.", ".5", " 10", 10.5, 10, None, "NaN"],
    "currency": ["CNY", "EUR", "XXX", "XTS", "XAU", "XAG", "cny", "ZZZ", "EU", "EURO", 978],
    "status": ["succeeded", "failed", "refunded", "", None],
    "paid_at": ["2026-11-25T12:00:00Z", "2026-11-25T12:00:00+08:00", "2026-11-25T12:00:00.123456-05:00",
                "2026-11-25t12:00:00z", "2026-11-25T12:00:00", "2026-11-25 12:00:00Z", "2026-13-01T00:00:00Z",
                "2026-11-25T24:00:00Z", "2026-11-25T12:00:00+0800", "1764072000", 1764072000, 1764072000.5,
                "yesterday", "2026-02-30T00:00:00Z", None],
    "created_at": ["2026-11-25T12:00:01Z", "2026-11-25T12:00:01", 0, "0"],
    "signature": ["a" * 64, "A" * 64, "a" * 63, "g" * 64, None, 5],
    "metadata": [{"game": "baccarat"}, {}, {"n": 2**53 - 1}, {"n": 2**53}, {"n": -(2**53)}, {"f": 1.5},
                 {"f": 1e300}, {"s": "x" * 1024}, {"s": "x" * 1025}, {"k" * 65: 1}, {"": 1}, {"nested": {"a": 1}},
                 {"list": [1]}, {"b": True, "z": None}, {f"k{i}": i for i in range(33)}, "flat", None],
    "extra_field": ["ignored", 1, {"deep": [1, 2]}],
}


def _corpus(base: dict) -> list[dict]:
    docs = [dict(base)]
    for name in base:
        without = dict(base)
        del without[name]
        docs.append(without)
    for name, values in _ADVERSARIAL.items():
        if name not in base and name not in ("metadata", "signature", "extra_field"):
            continue
        for value in values:
            docs.append(base | {name: value})
    return docs


@pytest.mark.parametrize("name", ["payment", "order"])
def test_models_and_committed_json_schemas_accept_and_reject_the_same_records(name: str) -> None:
    """The JSON Schemas subscribers validate with are as strict as the models, field by
    field, on valid and adversarial records (format date-time checked too)."""
    model = MODELS[name]
    schema = json.loads((JSON_DIR / f"{name}.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    assert "date-time" in validator.format_checker.checkers, "rfc3339-validator is installed: date-time is checked"
    base = json.loads((payment() if name == "payment" else order()).encode())
    disagree = []
    for doc in _corpus(base):
        raw = json.dumps(doc).encode()
        try:
            model.decode(raw)
            by_model = True
        except (ValidationError, ValueError):
            by_model = False
        by_schema = validator.is_valid(doc)
        if by_model != by_schema:
            disagree.append((doc, by_model, by_schema))
    assert not disagree, "\n".join(f"model {m}, schema {s}: {d}" for d, m, s in disagree[:10])


def test_a_record_that_repeats_a_key_is_rejected_wherever_the_key_is() -> None:
    from schemas.base import DuplicateKeyError

    raw = payment().encode()
    for bad in (raw[:-1] + b',"amount":"99"}', raw.replace(b'"game":"baccarat"', b'"game":"a","game":"b"'),
                raw[:-1] + b',"x":1,"x":2}', raw[:-1] + b',"amount" :"99"}'):
        with pytest.raises(DuplicateKeyError):
            Payment.decode(bad)
    assert Payment.decode(raw.replace(b'"amount":', b'"amount" :')) == payment(), "whitespace alone is fine"


def test_a_subscriber_built_from_todays_schemas_accepts_a_record_with_a_new_optional_field() -> None:
    """The compatibility policy (docs/messages.md): adding an optional field is not a new schema
    version, so today's JSON Schemas and today's models must accept tomorrow's records."""
    p = payment()
    r = Recovery(recovery_id=recovery_id_for(p.payment_id), order_id=p.order_id, payment=p,
                 deadline=T0 + timedelta(seconds=60), detected_at=T0 + timedelta(seconds=61))
    tomorrow = json.loads(r.encode()) | {"region": "eu-west-1"}
    tomorrow["payment"] = tomorrow["payment"] | {"risk_score": 0.2}
    schema = json.loads((JSON_DIR / "recovery.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    assert list(validator.iter_errors(tomorrow)) == []
    assert Recovery.decode(json.dumps(tomorrow).encode()) == r


def test_every_output_record_names_its_type_and_schema_version_and_carries_the_trace() -> None:
    from schemas.headers import SCHEMA_VERSIONS, headers_for, traceparent

    tp, other = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01", b"00-" + b"c" * 32 + b"-" + b"d" * 16 + b"-01"
    for name, model in MODELS.items():
        h = dict(headers_for(model, [tp, other]))
        assert h["content-type"] == b"application/json" and h["slipguard-type"] == name.encode()
        assert h["slipguard-schema-version"] == str(SCHEMA_VERSIONS[name]).encode()
        assert h["traceparent"] == tp and h["slipguard-links"] == other
    assert "traceparent" not in dict(headers_for(Recovery, [None]))  # type: ignore[list-item]
    assert traceparent([("x", b"1"), ("traceparent", tp)]) == tp and traceparent(None) is None


TRACE_OK = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("value", [
    b"00-abc", TRACE_OK.upper(), b"01" + TRACE_OK[2:], b"ff" + TRACE_OK[2:], TRACE_OK + b"-extra",
    TRACE_OK[:3] + b"0" * 32 + TRACE_OK[35:], TRACE_OK[:36] + b"0" * 16 + TRACE_OK[52:], TRACE_OK[:-1] + b"g",
    b"x" * 1_000_000, b"", None, TRACE_OK.replace(b"-", b"_"),
])
def test_only_a_valid_w3c_traceparent_is_kept_and_copied(value) -> None:
    from schemas.headers import headers_for, traceparent

    assert traceparent([("traceparent", value)]) is None
    assert "traceparent" not in dict(headers_for(Recovery, [value])), "never copied, whoever passes it"
    assert traceparent([("traceparent", TRACE_OK)]) == TRACE_OK
    assert traceparent([("traceparent", TRACE_OK), ("traceparent", TRACE_OK)]) is None, "two: neither is kept"


def test_headers_that_cannot_be_read_are_said_once_never_asked_again() -> None:
    from schemas.headers import read

    class Unreadable:  # confluent-kafka: SystemError for a header name that is not UTF-8
        asked = 0

        def headers(self):
            self.asked += 1
            raise SystemError("<method 'headers'> returned a result with an exception set")

    m = Unreadable()
    headers, problem = read(m)
    assert headers is None and "not UTF-8" in (problem or "") and m.asked == 1


@pytest.mark.parametrize("value", [b"0" * 800_000, b"\xff" * 55, TRACE_OK + b"\n"])
def test_a_traceparent_that_is_not_a_valid_one_is_dropped_never_copied(value: bytes) -> None:
    """A header of any size was copied onto the dead letter: an 800 KB one made a dead
    letter the broker refuses (found by tests/recover/test_fuzz_writer.py)."""
    from schemas.headers import headers_for, traceparent

    assert traceparent([("traceparent", value)]) is None
    assert "traceparent" not in dict(headers_for(DeadLetter, [value]))
