"""schemas.fast against the models it stands in front of.

The rule: whatever the fast path accepts, the model accepts, with the same values field
by field; where the fast path is unsure (None) the model decides. So `fast.decode`
accepts and rejects exactly what the model does, with the model's own errors. These
tests check both halves on generated records, mutated ones and a list of hostile ones,
and that the fast path does take ordinary records (or it would be no faster).
"""

from __future__ import annotations

import contextlib
import json
import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas import Order, Payment, Recovery, fast, recovery_id_for
from tests.factories import order, payment
from tests.schemas.test_schemas import _ADVERSARIAL, _corpus, amounts, currencies, ids

MODELS = {"payment": Payment, "order": Order, "recovery": Recovery}
FAST = {Payment: fast.payment, Order: fast.order, Recovery: fast.recovery}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
try:
    import slipguard_native as NATIVE  # noqa: N812 (the module, as streams/join/native.py names it)
except ImportError:  # not built: tests/join/test_native.py says so
    NATIVE = None


def _same(a: Any, b: Any, where: str = "") -> None:
    """Equal field by field, down to each value's type (and a time's offset)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, Payment | Order | Recovery):
        assert a.__dict__.keys() == b.__dict__.keys(), where
        assert a.model_fields_set == b.model_fields_set, \
            f"{where}: fields given {a.model_fields_set} vs {b.model_fields_set}"
        assert a.__pydantic_extra__ == b.__pydantic_extra__ and a.__pydantic_private__ == b.__pydantic_private__
        for name, value in a.__dict__.items():
            _same(value, b.__dict__[name], f"{where}.{name}")
        assert a == b and a.encode() == b.encode(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k, v in a.items():
            _same(v, b[k], f"{where}[{k!r}]")
    elif isinstance(a, datetime):
        assert a == b and a.utcoffset() == b.utcoffset() and a.isoformat() == b.isoformat(), where
    elif isinstance(a, Decimal):
        assert a.as_tuple() == b.as_tuple(), where
    elif isinstance(a, float):
        assert repr(a) == repr(b), where  # -0.0 is not 0.0
    else:
        assert a == b, where


def _outcome(decode: Any, raw: bytes) -> Any:
    try:
        return decode(raw)
    except Exception as exc:  # noqa: BLE001 - compared by type and message
        return (type(exc), str(exc))


def _native_view(m: Any) -> tuple:
    """A model as the native decoder returns it (slipguard_native.decode_*)."""
    def when(t: datetime) -> tuple[int, int]:
        offset = t.utcoffset()
        return (t - EPOCH) // timedelta(microseconds=1), int(offset.total_seconds()) if offset else 0

    meta = m.metadata
    if isinstance(m, Payment):
        return (m.payment_id, m.order_id, m.user_id, str(m.amount), m.currency, m.status, when(m.paid_at), meta,
                m.signature)
    return m.order_id, m.user_id, str(m.amount), m.currency, when(m.created_at), meta


def _check_native(cls: type, raw: bytes, by_model: Any) -> Any:
    """The native decoder (when built) on one record: unsure, or the model's very values."""
    decode = {Payment: getattr(NATIVE, "decode_payment", None), Order: getattr(NATIVE, "decode_order", None)}.get(cls)
    if decode is None:
        return None
    got = decode(raw)
    if got is not None:
        assert not isinstance(by_model, tuple), f"native accepted what the model rejects: {by_model}: {raw[:300]!r}"
        want = _native_view(by_model)
        meta = 7 if cls is Payment else 5  # the metadata's place: compared value by value, type by type
        assert got[:meta] + got[meta + 1:] == want[:meta] + want[meta + 1:], (got, want)
        _same(got[meta], want[meta], f"{cls.__name__}.metadata (native)")
    return got


def check(cls: type, raw: bytes) -> Any:
    """The rule on one record; returns what the fast path made (None: unsure)."""
    by_model = _outcome(cls.decode, raw)
    _check_native(cls, raw, by_model)
    made = FAST[cls](raw)
    if made is not None:
        assert not isinstance(by_model, tuple), f"fast path accepted what the model rejects: {by_model}: {raw[:300]!r}"
        _same(made, by_model, cls.__name__)
    by_decode = _outcome(lambda r: fast.decode(cls, r), raw)
    if isinstance(by_model, tuple):
        assert by_decode == by_model, raw[:300]
    else:
        _same(by_decode, by_model, cls.__name__)
    return made


# ---------------------------------------------------------------- ordinary records: fast, and equal

metadata = st.dictionaries(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=8),
    st.integers(-(2**53 - 1), 2**53 - 1)
    | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-(2**53 - 1), max_value=2**53 - 1)
    | st.booleans() | st.none(), max_size=5)
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
# naive on purpose: hypothesis takes naive bounds and adds a zone from `timezones`
times = st.datetimes(min_value=datetime(1000, 1, 1), timezones=offsets | st.just(UTC))  # noqa: DTZ001
payments = st.builds(Payment, payment_id=ids, order_id=ids, user_id=ids, amount=amounts, currency=currencies,
                     status=st.sampled_from(["succeeded", "failed"]), paid_at=times, metadata=st.none() | metadata,
                     signature=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64))
orders = st.builds(Order, order_id=ids, user_id=ids, amount=amounts, currency=currencies, created_at=times,
                   metadata=st.none() | metadata)
recoveries = st.builds(lambda p, d, t: Recovery(recovery_id=recovery_id_for(p.payment_id), order_id=p.order_id,
                                                payment=p, deadline=d, detected_at=t), payments, times, times)


def _texts(m: Any, rnd: random.Random) -> list[bytes]:
    """The record as producers write it: the model's own bytes; json.dumps with and without
    ASCII escapes and with spaces; keys in another order; optional fields as explicit null."""
    doc = json.loads(m.encode())
    shuffled = list(doc.items())
    rnd.shuffle(shuffled)
    nulls = doc | {k: None for k in ("metadata", "signature") if k in type(m).model_fields and k not in doc}
    return [m.encode(), json.dumps(doc).encode(), json.dumps(doc, ensure_ascii=False).encode(),
            json.dumps(dict(shuffled), separators=(",", ":")).encode(),
            json.dumps(nulls, separators=(",", ":")).encode()]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(payments, orders, recoveries), st.randoms(use_true_random=False))
def test_what_producers_write_is_decoded_the_same_way(m: Any, rnd: random.Random) -> None:
    for raw in _texts(m, rnd):
        check(type(m), raw)


def test_the_fast_path_takes_ordinary_records() -> None:
    """Else it is no faster: the bench's and the factories' records, and compact json.dumps."""
    from streams.tools.loadgen import _order, _payment

    ordinary = [(Payment, _payment("p-1", "o-1", "u-1", "10.50", "CNY", "succeeded", 1764072000123, "dice")),
                (Order, _order("o-1", "u-1", "10.50", "CNY", 1764072000123, "dice")),
                (Payment, payment().encode()), (Order, order().encode()),
                (Payment, json.dumps(json.loads(payment().encode()), separators=(",", ":")).encode()),
                (Recovery, Recovery(recovery_id=recovery_id_for("p-1"), order_id="o-1", payment=payment(),
                                    deadline=datetime.now(UTC), detected_at=datetime.now(UTC)).encode())]
    for cls, raw in ordinary:
        assert check(cls, raw) is not None, raw
        if NATIVE is not None and cls is not Recovery:
            assert _check_native(cls, raw, cls.decode(raw)) is not None, f"native unsure of {raw!r}"


# ---------------------------------------------------------------- adversarial records

@pytest.mark.parametrize("name", ["payment", "order"])
def test_the_adversarial_corpus_is_decided_as_the_models_decide(name: str) -> None:
    """Every field of the schema tests' corpus (missing, wrong type, near misses, bounds)."""
    base = json.loads((payment() if name == "payment" else order()).encode())
    taken = 0
    for doc in _corpus(base):
        for raw in (json.dumps(doc).encode(), json.dumps(doc, separators=(",", ":")).encode()):
            taken += check(MODELS[name], raw) is not None
    assert taken, "the fast path took none of the corpus"


HOSTILE_VALUES: dict[str, list[Any]] = {
    # the full-width look-alikes below are hostile input on purpose
    "payment_id": ["p\n", "\np", "p\u0000", "ｐ1", "p\u200b", "\ud800", "p" * 10_000],  # noqa: RUF001 look-alike input
    "amount": ["1\n", "\u0661", "00001.5", "0.00", "000000000000.0001", "1_0", "+1", "1.0\n",
               "１"],  # noqa: RUF001 look-alike input
    "currency": ["EUR\n", "EUR ", "E\u0000R", "Eur"],
    "paid_at": ["2026-11-25T12:00:00Z\n", "2026-11-25T12:00:00.1234567Z", "2026-11-25T12:00:60Z",
                "2026-11-25T12:60:00Z", "2026-11-25T12:00:00+24:00", "2026-11-25T12:00:00+05:60",
                "2026-11-25T12:00:00-00:00", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999-23:59",
                "2024-02-29T00:00:00Z", "2023-02-29T00:00:00Z", "2026-11-25T12:00:00.Z", "2026-11-25T12:00Z",
                "2026-W48-3T12:00:00Z", "20261125T120000Z", "2026-11-25T12:00:00,5Z",
                "２０２６-11-25T12:00:00Z"],  # noqa: RUF001 look-alike input
    "metadata": [{"k": "\u0000"}, {"\u0000": 1}, {"k": "a\"b"}, {"k": "\\\""}, {"k": 1.0}, {"k": -0.0}, {"k": 0},
                 {"k": 2.0**53}, {"k": 1e-300}, {"k": "注单"}, {"k": "\ud83d\ude00"}, {"k": [[[]]]}, {"k": {"k": 1}}],
    "status": ["Succeeded", "succeeded\n", "succeeded\u0000"],
}


def _hostile_texts() -> list[bytes]:
    base = payment(signature="ab" * 32).encode()
    doc = json.loads(base)
    out = []
    for name, values in HOSTILE_VALUES.items():
        for value in values:
            with contextlib.suppress(UnicodeEncodeError):
                out.append(json.dumps(doc | {name: value}).encode())
            out.append(json.dumps(doc | {name: value}, ensure_ascii=True).encode())
    key = b'"payment_id":'
    out += [
        base.replace(key, b'"payment\\u005fid":'),  # an escaped key: the same key
        base[:-1] + b',"payment_id":"p-2"}',  # repeated key, different value
        base[:-1] + b',"payment_id":' + json.dumps(doc["payment_id"]).encode() + b"}",  # repeated, same value
        base.replace(b'"metadata":{', b'"metadata":{"k":1,"k":1,'),
        base.replace(key, b'"payment_id" :', 1) + b"",
        base[:-1] + b',"payment_id" :"p-2"}',  # repeated, with a space before its colon
        base[:-1] + b',"amount":"1","x":"\\":\\":"}',  # escaped quotes after a repeated key
        base.replace(b'"metadata":{', b'"metadata":{"a\\"":"\\"",'),
        b"\xef\xbb\xbf" + base, base + b"\n", b" " + base, base + b"\x00", base[:-1], base + b"}",
        base.replace(b'"dice"', b'"\xff"') if b'"dice"' in base else base.replace(b'"}', b'\xff"}', 1),
        base.replace(b"{", b"[", 1), b"null", b"[]", b"{}", b"",
        base[:-1] + b',"unknown":' + b"[" * 60_000 + b"]" * 60_000 + b"}",  # deep: no crash
        base.replace(b'"metadata":{', b'"metadata":{"deep":' + b"[" * 60_000 + b"]" * 60_000 + b",", 1),
        base[:-1] + b',"metadata":null}', base.replace(b'"signature"', b'"signature":null,"x"', 1),
    ]
    return out


def test_hostile_payments_are_decided_as_the_model_decides() -> None:
    for raw in _hostile_texts():
        check(Payment, raw)


def _mutations(raw: bytes, rnd: random.Random) -> list[bytes]:
    out = []
    for _ in range(30):
        i = rnd.randrange(len(raw))
        b = rnd.choice(b'"\\:,{}[] \n0123456789aZz.-+eE\x00\xff')
        op = rnd.randrange(4)
        if op == 0:
            out.append(raw[:i] + bytes([b]) + raw[i + 1:])
        elif op == 1:
            out.append(raw[:i] + bytes([b]) + raw[i:])
        elif op == 2:
            out.append(raw[:i] + raw[i + 1:])
        else:
            j = rnd.randrange(len(raw))
            out.append(raw[:i] + raw[j:j + 12] + raw[i:])
    return out


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(payments, orders, recoveries), st.randoms(use_true_random=False))
@example(Payment(payment_id="p", order_id="o", user_id="u", amount=Decimal("1"), currency="EUR", status="failed",
                 paid_at=datetime(2026, 11, 25, tzinfo=UTC), metadata={"a": 1}), random.Random(1))
def test_byte_level_mutations_are_decided_as_the_model_decides(m: Any, rnd: random.Random) -> None:
    """Bytes flipped, inserted, dropped, spliced: the fast path never takes one the model
    rejects, nor makes different values of one it accepts."""
    for raw in _mutations(m.encode(), rnd):
        check(type(m), raw)


@settings(max_examples=300)
@given(st.sampled_from(sorted(_ADVERSARIAL)), st.data())
def test_generated_field_values_are_decided_as_the_model_decides(name: str, data: st.DataObject) -> None:
    """Any JSON value in any field, and any text near the field's rule."""
    scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
               | st.text() | st.from_regex(r"[0-9]{1,14}(\.[0-9]{0,6})?", fullmatch=True)
               | st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2})?(\.[0-9]{0,8})?"
                               r"([Zz]|[+-][0-9]{2}:?[0-9]{2})?", fullmatch=True)
               | st.from_regex(r"[A-Za-z0-9._:\- ]{0,66}", fullmatch=True))
    value = data.draw(scalars | st.lists(scalars, max_size=2)
                      | st.dictionaries(st.text(max_size=66), scalars, max_size=34))
    for cls, base in ((Payment, payment()), (Order, order())):
        doc = json.loads(base.encode()) | {name: value}
        for raw in (json.dumps(doc).encode(), json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")):
            check(cls, raw)


# ---------------------------------------------------------------- the fast path's bounds are the model's

SAFE = 2**53 - 1
_NO = object()  # a field left out of the text
AT_BOUNDS: dict[str, dict[str, Any]] = {
    "no metadata": {"metadata": _NO},
    "metadata null": {"metadata": None},
    "empty metadata": {"metadata": {}},
    "32 metadata keys": {"metadata": {f"k{i}": i for i in range(32)}},
    "a one-character key": {"metadata": {"k": 1}},
    "a 64-character key": {"metadata": {"k" * 64: 1}},
    "a 1024-character value": {"metadata": {"k": "v" * 1024}},
    "the largest safe integers": {"metadata": {"lo": -SAFE, "hi": SAFE}},
    "floats": {"metadata": {"x": 1.5, "y": -0.25}},
    "the largest safe floats": {"metadata": {"lo": float(-SAFE), "hi": float(SAFE)}},
    "booleans and null": {"metadata": {"t": True, "f": False, "n": None}},
}
PAST_BOUNDS: dict[str, dict[str, Any]] = {
    "33 metadata keys": {"metadata": {f"k{i}": i for i in range(33)}},
    "an empty key": {"metadata": {"": 1}},
    "a 65-character key": {"metadata": {"k" * 65: 1}},
    "a 1025-character value": {"metadata": {"k": "v" * 1025}},
    "integers past the safe ones": {"metadata": {"hi": SAFE + 1}},
    "negative integers past the safe ones": {"metadata": {"lo": -SAFE - 1}},
    "floats past the safe ones": {"metadata": {"hi": float(SAFE) + 2.0}},
    "negative floats past the safe ones": {"metadata": {"lo": -float(SAFE) - 2.0}},
}
SIGNATURES: dict[str, dict[str, Any]] = {
    "a signature": {"signature": "0123456789abcdef" * 4},
    "signature null": {"signature": None},
}


def _text(m: Any, over: dict[str, Any]) -> bytes:
    doc = json.loads(m.encode()) | over
    return json.dumps({k: v for k, v in doc.items() if v is not _NO}, separators=(",", ":")).encode()


@pytest.mark.parametrize("case", sorted(AT_BOUNDS.keys() | SIGNATURES.keys()))
def test_the_fast_path_takes_records_at_each_bound_the_model_accepts(case: str) -> None:
    """Not only ordinary records: the fast path is sure of every record the model takes at
    the edge of each rule it checks itself (or the join asks the model, 10 times slower)."""
    over = AT_BOUNDS.get(case) or SIGNATURES[case]
    models = [(Payment, payment(metadata=None))] + ([] if case in SIGNATURES else [(Order, order())])
    for cls, m in models:
        raw = _text(m, over)
        assert check(cls, raw) is not None, raw[:200]
    rec = Recovery(recovery_id=recovery_id_for("p-1"), order_id="o-1", payment=payment(), deadline=EPOCH,
                   detected_at=EPOCH)
    doc = json.loads(rec.encode())
    doc["payment"] = json.loads(_text(payment(metadata=None), over))
    assert check(Recovery, json.dumps(doc).encode()) is not None


@pytest.mark.parametrize("case", sorted(PAST_BOUNDS))
def test_the_fast_path_leaves_records_past_each_bound_to_the_model(case: str) -> None:
    for cls, m in ((Payment, payment()), (Order, order())):
        raw = _text(m, PAST_BOUNDS[case])
        assert check(cls, raw) is None
        with pytest.raises(ValueError, match="metadata"):
            fast.decode(cls, raw)


def _recovery_doc() -> dict[str, Any]:
    return json.loads(Recovery(recovery_id=recovery_id_for("p-1"), order_id="o-1", payment=payment(),
                               deadline=datetime(2026, 11, 25, 12, 1, tzinfo=UTC),
                               detected_at=datetime(2026, 11, 25, 12, 1, 5, tzinfo=UTC)).encode())


@pytest.mark.parametrize(("over", "taken"), [
    ({}, True), ({"schema_version": 1}, True), ({"reason": "order_missing"}, True),
    ({"schema_version": 2}, False), ({"schema_version": 0}, False), ({"schema_version": True}, False),
    ({"schema_version": 1.0}, False), ({"schema_version": "1"}, False), ({"reason": "other"}, False),
    ({"deadline": "2026-11-25"}, False), ({"detected_at": "2026-11-25"}, False),
    ({"deadline": "2026-11-25T12:01:00"}, False), ({"recovery_id": "p-1"}, False), ({"order_id": "o 1"}, False),
])
def test_recoveries_are_decided_as_the_model_decides(over: dict[str, Any], taken: bool) -> None:
    """The review's cases among them: a date-only deadline and schema_version 2, which the
    model rejects, are never taken by the fast path (which would say schema_version 1)."""
    raw = json.dumps(_recovery_doc() | over).encode()
    assert (check(Recovery, raw) is not None) is taken


def test_an_order_or_a_recovery_that_repeats_a_key_is_rejected_as_the_model_rejects_it() -> None:
    from schemas.base import DuplicateKeyError

    o = order().encode()
    r = json.dumps(_recovery_doc()).encode()
    for raw in (o[:-1] + b',"order_id":"o-2"}', o[:-1] + b',"order_id":"ord-1"}', o[:-1] + b',"amount":"1"}',
                o[:-1] + b',"metadata":null,"metadata":null}', r[:-1] + b',"order_id":"o-1"}',
                r[:-1] + b',"schema_version":1,"schema_version":1}'):
        cls = Order if raw.startswith(o[:-1]) else Recovery
        assert check(cls, raw) is None
        with pytest.raises(DuplicateKeyError):
            fast.decode(cls, raw)


def test_decode_asks_the_model_only_when_the_fast_path_is_unsure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ordinary records never reach the model; unusual ones (a field it does not know) and
    models without a fast path (the writer decodes LateOrder this way) do, with its result."""
    from schemas import LateOrder

    asked: list[type] = []
    for cls in (Payment, Order, Recovery, LateOrder):
        model_decode = cls.decode
        monkeypatch.setattr(cls, "decode", classmethod(lambda c, raw, d=model_decode: asked.append(c) or d(raw)))
    rec = json.dumps(_recovery_doc()).encode()
    for cls, raw in ((Payment, payment().encode()), (Order, order().encode()), (Recovery, rec)):
        assert fast.decode(cls, raw) == cls.model_validate_json(raw)
        assert asked == [], cls
        unusual = raw[:-1] + b',"added_later":1}'
        assert fast.decode(cls, unusual) == cls.model_validate_json(raw)
        assert asked == [cls]
        asked.clear()
    late = LateOrder(order_id="o-1", order=order(order_id="o-1"), payment_id="p-1",
                     recovery_id=recovery_id_for("p-1"), lateness_seconds=3).encode()
    assert fast.decode(LateOrder, late) == LateOrder.model_validate_json(late) and asked == [LateOrder]
