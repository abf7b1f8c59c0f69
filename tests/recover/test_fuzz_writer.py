"""A fuzzer for the writer's decode and rejection path, with no Kafka and no PostgreSQL.

Batches of honest, forged, replayed and malformed records (huge, deep, not UTF-8, lone
surrogates, duplicate keys, huge numbers, hostile headers) go through what the writer does
before the database: Writer._decode, the batch's columns (store._recovery_columns) and
the dead letter of every poison record (Writer.dead_letter_of). The properties:

* nothing raises out of them;
* every record is exactly one of: stored, rejected (an audit row), dead-lettered; and
  which one is what a reference written here from the contract says (the models decide
  what is malformed; the relations between fields are checked again independently);
* nothing that must be rejected is accepted: no forged, unsigned or mismatched record
  is stored;
* every dead letter can be built and fits the broker's default message size.

The budget is small so that it runs in every test run; raise it with
HYPOTHESIS_WRITER_EXAMPLES to fuzz longer.
"""

from __future__ import annotations

import hmac
import os
import re
import uuid
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import DeadLetter, LateOrder, Recovery, recovery_id_for
from streams.recover.store import _recovery_columns
from streams.recover.writer import Record, Writer
from streams.settings import Settings
from tests.schemas.test_fast import orders, payments, times
from tests.schemas.test_schemas import ids

KEY, OLD, WRONG = b"current-key-0123456789", b"previous-key-0123456789", b"forger-key-0123456789"
BROKER_MAX = 1_000_000  # message.max.bytes is 1,048,588 by default; headers and framing share it
TRACE = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
EXAMPLES = int(os.environ.get("HYPOTHESIS_WRITER_EXAMPLES", "40"))


def _settings(keys: tuple[bytes, ...], minimise: bool) -> Settings:
    named = dict(zip(("payment_hmac_key", "payment_hmac_previous_key"), (k.decode() for k in keys), strict=False))
    return Settings(minimise_personal_data=minimise, **named)


# ---------------------------------------------------------------- the reference

def _canonical(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _signed(p, keys: tuple[bytes, ...]) -> bool:
    return p.signature is not None and any(hmac.compare_digest(p.signature, p.expected_signature(k)) for k in keys)


def expected(topic: str, value: bytes | None, keys: tuple[bytes, ...]) -> str:
    """"stored", "rejected" or "dead", from the contract: the model (never the fast path)
    says what decodes; the relations are written out again here."""
    model = Recovery if topic == "recovery" else LateOrder
    try:
        m = model.decode(value)  # type: ignore[arg-type]
    except (ValidationError, ValueError, TypeError):
        return "dead"
    if not _canonical(m.recovery_id):
        return "dead"
    if isinstance(m, LateOrder):
        ok = m.order.order_id == m.order_id and m.recovery_id == recovery_id_for(m.payment_id)
        return "stored" if ok else "dead"
    p = m.payment
    ok = (m.recovery_id == recovery_id_for(p.payment_id) and p.status == "succeeded" and p.order_id == m.order_id
          and (not keys or _signed(p, keys)))
    return "stored" if ok else "rejected"


# ---------------------------------------------------------------- records

@dataclass(frozen=True)
class Case:
    topic: str  # "recovery" or "late"
    value: bytes | None
    kind: str  # how it was made
    must: str | None  # what the maker knows it must be (None: a mutation; the reference decides)
    headers: tuple = ()


@st.composite
def honest_recovery(draw, keys: tuple[bytes, ...]) -> Recovery:
    p = draw(payments).model_copy(update={"status": "succeeded"})
    if keys:
        p = p.model_copy(update={"signature": p.expected_signature(draw(st.sampled_from(keys)))})
    return Recovery(recovery_id=recovery_id_for(p.payment_id), order_id=p.order_id, payment=p,
                    deadline=draw(times), detected_at=draw(times))


@st.composite
def honest_late(draw) -> LateOrder:
    o, pid = draw(orders), draw(ids)
    lateness = draw(st.floats(min_value=0, max_value=1e9, allow_nan=False))
    return LateOrder(order_id=o.order_id, order=o, payment_id=pid, recovery_id=recovery_id_for(pid),
                     lateness_seconds=lateness)


def _spelled_loosely(rid: str) -> str:
    """The same UUID as PostgreSQL reads it, hyphens elsewhere."""
    hexes = rid.replace("-", "")
    return "-".join(hexes[i:i + 4] for i in range(0, 16, 4)) + "-" + hexes[16:]


@st.composite
def forged_recovery(draw, keys: tuple[bytes, ...]) -> Case:
    r = draw(honest_recovery(keys))
    p = r.payment
    other = draw(ids.filter(lambda i: i != p.payment_id))
    forgeries = {
        "random recovery_id": lambda: r.model_copy(update={"recovery_id": str(draw(st.uuids()))}),
        "another payment's recovery_id": lambda: r.model_copy(update={"recovery_id": recovery_id_for(other)}),
        "another payment_id": lambda: r.model_copy(update={"payment": p.model_copy(update={"payment_id": other})}),
        "order_id not the payment's": lambda: r.model_copy(update={"order_id": other}),
        "failed payment": lambda: r.model_copy(update={"payment": p.model_copy(update={"status": "failed"})}),
    }
    if keys:
        forgeries |= {
            "unsigned": lambda: r.model_copy(update={"payment": p.model_copy(update={"signature": None})}),
            "signed with another key": lambda: r.model_copy(
                update={"payment": p.model_copy(update={"signature": p.expected_signature(WRONG)})}),
            "amount changed after signing": lambda: r.model_copy(update={"payment": p.model_copy(
                update={"amount": p.amount + (1 if p.amount < 999_999_999_998 else -1)})}),
            "user changed after signing": lambda: r.model_copy(
                update={"payment": p.model_copy(update={"user_id": other})}),
        }
    kind = draw(st.sampled_from([*sorted(forgeries), "recovery_id spelled loosely", "recovery_id of hyphens"]))
    if kind == "recovery_id spelled loosely":
        return Case("recovery", r.model_copy(update={"recovery_id": _spelled_loosely(r.recovery_id)}).encode(),
                    kind, "dead")
    if kind == "recovery_id of hyphens":
        return Case("recovery", r.model_copy(update={"recovery_id": "-" * 36}).encode(), kind, "dead")
    return Case("recovery", forgeries[kind]().encode(), kind, "rejected")


@st.composite
def forged_late(draw) -> Case:
    late = draw(honest_late())
    other = draw(ids.filter(lambda i: i not in (late.payment_id, late.order_id)))
    forgeries = {
        "random recovery_id": {"recovery_id": str(draw(st.uuids()))},
        "another payment's recovery_id": {"recovery_id": recovery_id_for(other)},
        "another payment_id": {"payment_id": other},
        "order of another order": {"order": late.order.model_copy(update={"order_id": other})},
        "order_id of another order": {"order_id": other},
    }
    kind = draw(st.sampled_from(sorted(forgeries)))
    return Case("late", late.model_copy(update=forgeries[kind]).encode(), f"late: {kind}", "dead")


def _string_starts(raw: bytes) -> list[int]:
    """Where string values begin (just after their opening quote)."""
    out, at = [], raw.find(b'":"')
    while at != -1:
        out.append(at + 3)
        at = raw.find(b'":"', at + 1)
    return out or [len(raw) // 2]


INSERTS = {
    "lone surrogate escape": b"\\ud800",
    "lone low surrogate escape": b"\\udfff",
    "surrogate as raw bytes": b"\xed\xa0\x80",
    "not UTF-8": b"\xe9",
    "NUL escape": b"\\u0000",
    "quote": b'"',
}
TAILS = {
    "a field near 1 MB": lambda n: b',"pad":"' + b"x" * n + b'"',
    "deep JSON": lambda n: b',"deep":' + b"[" * (n // 10) + b"]" * (n // 10),
    "deep objects": lambda n: b',"deep":' + b'{"a":' * (n // 100) + b"1" + b"}" * (n // 100),
    "huge number": lambda n: b',"n":' + b"9" * min(n, 20_000),
    "huge exponent": lambda n: b',"n":1e' + str(n).encode(),
    "duplicate key": lambda n: b',"recovery_id":"00000000-0000-0000-0000-000000000000"',
    "duplicate order_id": lambda n: b',"order_id":"x"',
}


SIZES = [10, 3_000, 150_000, 190_000, 300_000, 900_000]  # around the DLQ's 256 KiB and the broker's 1 MB


@st.composite
def mutated(draw, case: Case) -> Case:
    raw = case.value or b"{}"
    how = draw(st.sampled_from(sorted(INSERTS) + sorted(TAILS) + ["truncated", "byte flipped", "number for a string",
                                                                  "huge metadata"]))
    if how in INSERTS:
        at = draw(st.sampled_from(_string_starts(raw)))
        value = raw[:at] + INSERTS[how] + raw[at:]
    elif how in TAILS:
        value = raw[:-1] + TAILS[how](draw(st.sampled_from(SIZES))) + b"}"
    elif how == "truncated":
        value = raw[:draw(st.integers(0, max(len(raw) - 1, 0)))]
    elif how == "byte flipped":
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        value = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1:]
    elif how == "number for a string":
        value = re.sub(rb'"amount":"([0-9.]+)"', rb'"amount":\1', raw, count=1)
        value = value.replace(b'"lateness_seconds":', b'"lateness_seconds":1e999', 1)
    else:
        value = raw.replace(b'"metadata":{', b'"metadata":{"big":"' + b"m" * draw(st.sampled_from(SIZES)) + b'",', 1)
    return Case(case.topic, value, f"{case.kind}, {how}", None)


JUNK = [None, b"", b"null", b"[]", b'"x"', b"0", b"{", b"\xff\xfe", b"{}", b'{"recovery_id":' + b"[" * 100_000]


@st.composite
def headers(draw) -> tuple:
    trace = draw(st.sampled_from([None, TRACE, b"00-abc", b"\xff" * 55, b"0" * 600_000, b"0" * 800_000]))
    # Names as the reader hands them over: UTF-8, or any other bytes surrogate-escaped (faust_compat).
    names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40) | st.binary(min_size=1, max_size=8).map(
        lambda raw: raw.decode("utf-8", "surrogateescape"))
    values = st.none() | st.binary(max_size=64) | st.sampled_from([b"v" * 5_000])
    found = draw(st.lists(st.tuples(names, values), max_size=draw(st.sampled_from([3, 80]))))
    return tuple(found + ([("traceparent", trace)] if trace is not None else []))


@st.composite
def cases(draw, keys: tuple[bytes, ...]) -> Case:
    honest = st.one_of(honest_recovery(keys).map(lambda r: Case("recovery", r.encode(), "honest recovery", "stored")),
                       honest_late().map(lambda o: Case("late", o.encode(), "honest late order", "stored")))
    made = draw(st.one_of(honest, forged_recovery(keys), forged_late(),
                          st.tuples(st.sampled_from(["recovery", "late"]), st.sampled_from(JUNK))
                          .map(lambda t: Case(t[0], t[1], "junk", "dead"))))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        made = draw(mutated(made))
    return Case(made.topic, made.value, made.kind, made.must, draw(headers()))


# ---------------------------------------------------------------- the properties

def _verdicts(writer: Writer, s: Settings, batch: list[Case]) -> list[str]:
    topics = {"recovery": s.recovery_topic, "late": s.late_topic}
    records = [Record(topics[c.topic], 3, n, 1_800_000_000_000, list(c.headers), b"k", c.value, token=n)
               for n, c in enumerate(batch)]
    items, poison = writer._decode(records)
    seen = sorted([r.offset for _, r in items] + [r.offset for r, _, _ in poison])
    assert seen == list(range(len(batch))), "every record is an item or poison, once"
    got = {r.offset: "dead" for r, _, _ in poison}
    recoveries = [item for item, _ in items if isinstance(item.message, Recovery)]
    cols = _recovery_columns(recoveries, s.hmac_keys)
    assert all(len(v) == len(recoveries) for v in cols.values())
    for item, accept, reason in zip(recoveries, cols["accept"], cols["reason"], strict=True):
        assert accept == (reason is None) and (reason is None or len(reason) < 1000)
        got[item.offset] = "stored" if accept else "rejected"
    for item, _ in items:
        got.setdefault(item.offset, "stored")
    for record, error, _ in poison:
        for minimise in (False, True):
            _dead_letter_builds(record, error, minimise)
    return [got[n] for n in range(len(batch))]




def _unreadable(headers: tuple) -> bool:
    """A header name that was not UTF-8 on the wire: the contract refuses the record."""
    return any(any("\udc80" <= c <= "\udcff" for c in name) for name, _ in headers)


def _size(key: bytes | None, value: bytes | None, headers: list) -> int:
    return len(key or b"") + len(value or b"") + sum(len(k.encode("utf-8", "surrogateescape")) + len(v or b"")
                                                     for k, v in headers)


def _dead_letter_builds(record: Record, error: str, minimise: bool) -> None:
    """The dead letter builds, decodes and fits the broker (with minimise_personal_data, a
    lone surrogate outside the metadata, escaped or as raw bytes ED A0 80, once raised
    UnicodeEncodeError)."""
    writer = Writer(Settings(minimise_personal_data=minimise), None)  # type: ignore[arg-type]
    key, value, dlq_headers = writer.dead_letter_of(record, error)
    if _size(record.key, record.value, record.headers) < BROKER_MAX:  # an input the broker took
        assert _size(key, value, dlq_headers) < BROKER_MAX, "the dead letter fits the broker too"
    assert DeadLetter.decode(value).offset == record.offset


batches = st.sampled_from([(), (KEY,), (KEY, OLD)]).flatmap(
    lambda keys: st.tuples(st.just(keys), st.lists(cases(keys), min_size=1, max_size=6)))


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(batches, st.booleans(), st.booleans())
def test_every_record_is_stored_rejected_or_dead_lettered_as_the_contract_says(drawn, minimise: bool,
                                                                               replay: bool) -> None:
    keys, batch = drawn
    if replay:
        batch = [*batch, batch[0]]  # the same record again: the same verdict
    s = _settings(keys, minimise)
    got = _verdicts(Writer(s, None), s, batch)  # type: ignore[arg-type]
    for case, verdict in zip(batch, got, strict=True):
        if _unreadable(case.headers):
            assert verdict == "dead", (case.kind, verdict, case.headers)
            continue
        assert verdict == expected(case.topic, case.value, keys), (case.kind, verdict, (case.value or b"")[:300])
        if case.must is not None:
            assert verdict == case.must, (case.kind, verdict)
    assert not replay or got[-1] == got[0]


@pytest.mark.parametrize("surrogate", [b"\\ud800", b"\xed\xa0\x80"], ids=["escaped", "raw bytes"])
def test_a_minimised_dead_letter_of_a_lone_surrogate_builds(surrogate: bytes) -> None:
    writer = Writer(Settings(minimise_personal_data=True), None)  # type: ignore[arg-type]
    record = Record("orders.recovery", 0, 0, None, [], None, b'{"recovery_id": "' + surrogate + b'"}')
    writer.dead_letter_of(record, "not a recovery")
