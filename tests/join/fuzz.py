"""Hostile records mixed into honest traffic, driven through the join's whole record path
as a worker drives it (streams/join/pipeline.py: hold, merge, intake, core, state,
outputs; the changelog codec and restore at each commit).

Used by tests/join/test_fuzz.py (Hypothesis, no broker) and by
tests/integration/test_fuzz_records.py (the same records through running workers).

Honest traffic: signed payments, each with its order a little later (within the
window), past its deadline (late), or never (recovered); each partition written in
time order with less than GRACE/2 of disorder. Hostile records carry their own order
ids, except those generated to interact with an honest one, which may only cause what
the contract entitles them to: a forged payment a `bad_signature` anomaly, an exact
copy a dropped duplicate, anything invalid a dead letter.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message

from schemas import DeadLetter, Order, Payment, recovery_id_for
from schemas.fields import epoch_ms
from schemas.headers import valid_traceparent
from streams.join import intake
from streams.join import native as native_core
from streams.join.core import JoinParams, PartitionJoin, Side
from streams.join.merge import MIN_EVENT_MS
from streams.join.native import NativePipeline
from streams.join.pipeline import Pipeline
from streams.kafka.topics import PRODUCER_BATCH_BYTES
from streams.settings import Settings

KEY = b"fuzz-hmac-key-that-is-32-bytes!!"
T, G, H = 5_000, 1_000, 3_600_000
MAX_FUTURE = 3_600_000
BASE = 1_790_000_000_000
TRACE = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
PAYMENTS, ORDERS = "payments", "orders"
TOPICS = (PAYMENTS, ORDERS)
RECORD_LIMIT = PRODUCER_BATCH_BYTES - 1024  # what one record may weigh in a batch (with its framing)
UNREADABLE = "unreadable"  # headers whose names are not UTF-8 (confluent-kafka raises reading them)


def settings(**over: Any) -> Settings:
    values = dict(payments_topic=PAYMENTS, orders_topic=ORDERS, order_timeout=f"{T}ms", grace=f"{G}ms",
                  late_horizon=f"{H}ms", max_future=f"{MAX_FUTURE}ms", payment_hmac_key=KEY.decode())
    return Settings.model_validate(values | over)


@dataclass
class Rec:
    """One input record as a producer wrote it."""

    side: int  # Side.PAYMENT | Side.ORDER
    key: bytes | None
    value: bytes | None
    ts: int  # its Kafka timestamp (-1: none)
    headers: list[tuple[str, bytes | None]] | str | None = None  # or UNREADABLE
    hostile: str = ""  # what kind of hostile record, "" for an honest one
    oid: str = ""  # the order id it is about (honest, or interacting)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("key", "value"):
            d[name] = None if d[name] is None else base64.b64encode(d[name]).decode()
        if isinstance(self.headers, list):
            d["headers"] = [[k, None if v is None else base64.b64encode(v).decode()] for k, v in self.headers]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Rec:
        """(Bytes as base64, or {"b64": ..., "times": n} for a long run, as the corpus keeps them.)"""
        def b(v: Any) -> bytes | None:
            if isinstance(v, dict):
                return base64.b64decode(v["b64"]) * v["times"]
            return None if v is None else base64.b64decode(v)

        d = dict(d)
        d["key"], d["value"] = b(d["key"]), b(d["value"])
        if isinstance(d["headers"], list):
            d["headers"] = [(k, b(v)) for k, v in d["headers"]]
        return cls(**d)


# ---------------------------------------------------------------- honest traffic


def _time(ms: int) -> str:
    from schemas.fields import from_epoch_ms

    return from_epoch_ms(ms).isoformat().replace("+00:00", "Z")


def signed_payment(pid: str, oid: str, ts: int, *, amount: str = "10.50", status: str = "succeeded",
                   key: bytes = KEY, paid_at: int | None = None, uid: str = "u1") -> bytes:
    p = Payment.decode(json.dumps({"payment_id": pid, "order_id": oid, "user_id": uid, "amount": amount,
                                   "currency": "CNY", "status": status,
                                   "paid_at": _time(ts if paid_at is None else paid_at),
                                   "metadata": {"game": "baccarat"}}).encode())
    return p.model_copy(update={"signature": p.expected_signature(key)}).encode()


def order_value(oid: str, ts: int, *, amount: str = "10.50", uid: str = "u1") -> bytes:
    return json.dumps({"order_id": oid, "user_id": uid, "amount": amount, "currency": "CNY",
                       "created_at": _time(ts)}).encode()


def honest(count: int, seed: int, *, start: int = BASE, spacing: int = 50, prefix: str = "h") -> list[Rec]:
    """`count` orders' payments and orders (each side in its publish order)."""
    rnd = random.Random(seed)
    pays: list[tuple[int, Rec]] = []
    ords: list[tuple[int, Rec]] = []
    for i in range(count):
        t = start + i * spacing
        oid, pid = f"{prefix}{seed}-{i}", f"{prefix}p{seed}-{i}"
        headers = [("traceparent", TRACE)] if rnd.random() < 0.3 else None
        pays.append((t + rnd.randrange(G // 2), Rec(Side.PAYMENT, oid.encode(), signed_payment(pid, oid, t), t,
                                                     headers, oid=oid)))
        if i % 10 == 3:
            continue  # missing: recovered
        ts = t + T + 1 + rnd.randrange(T) if i % 10 == 7 else t + rnd.randrange(3 * T // 5)  # late, or in time
        ords.append((ts + rnd.randrange(G // 2), Rec(Side.ORDER, oid.encode(), order_value(oid, ts), ts, headers,
                                                     oid=oid)))
    return [r for _, r in sorted(pays, key=lambda x: x[0])] + [r for _, r in sorted(ords, key=lambda x: x[0])]


# ---------------------------------------------------------------- hostile records
# Written against random.Random, so that one generator serves Hypothesis (st.randoms():
# its draws are Hypothesis's, shrinkable) and the seeded run on the real broker.

_SURROGATES = [b'{"payment_id":"\\ud800"}', b'{"order_id":"o\xed\xa0\x80"}', b'{"user_id":"\\udfff"}']
_LEAVES = [None, True, False, 0, -1, 2**63, 10**400, 1.5, -0.0, 1e308, "", "x", "\ud800", "é" * 10, "\x00"]


def _junk_json(rnd: random.Random, depth: int = 0) -> Any:
    kind = rnd.randrange(4 if depth < 3 else 1)
    if kind == 0:
        return rnd.choice(_LEAVES)
    if kind == 1:
        return [_junk_json(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    if kind == 2:
        return {rnd.choice(["a", "order_id", "amount", "\ud800", ""]): _junk_json(rnd, depth + 1)
                for _ in range(rnd.randrange(4))}
    return rnd.getrandbits(64) * rnd.choice([1, -1])


def _dumps(obj: Any) -> bytes:
    try:
        return json.dumps(obj).encode()
    except (ValueError, UnicodeEncodeError):
        return b"{}"


def hostile_value(rnd: random.Random, side: int, oid: str) -> bytes | None:
    """A value: random bytes, JSON of any shape, a near-valid record with one field wrong,
    a deep or huge one, surrogates, duplicate keys, numbers out of range."""
    kind = rnd.choice(["bytes", "json", "near", "near", "deep", "huge", "surrogate", "dupkey", "none", "empty",
                       "number"])
    good = json.loads(signed_payment(f"x{oid}", oid, BASE) if side == Side.PAYMENT else order_value(oid, BASE))
    if kind == "bytes":
        return rnd.randbytes(rnd.randrange(200))
    if kind == "json":
        return _dumps(_junk_json(rnd))
    if kind == "near":
        good[rnd.choice(sorted(good))] = _junk_json(rnd)
        return _dumps(good)
    if kind == "deep":
        depth = rnd.randrange(50, 20_000)
        return _dumps(good)[:-1] + b',"metadata":' + b"[" * depth + b"]" * depth + b"}"
    if kind == "huge":
        good["metadata"] = {"k": "y" * rnd.choice([60_000, 70_000, 200_000, 1_000_000])}
        return _dumps(good)
    if kind == "surrogate":
        return rnd.choice(_SURROGATES)
    if kind == "dupkey":
        return _dumps(good)[:-1] + b',"order_id":"' + oid.encode() + b'"}'
    if kind == "number":
        good["amount"] = rnd.choice([10.5, "1e400", "NaN", "-1", "0", "1" * 400, 2**70])
        return _dumps(good)
    return None if kind == "none" else b""


def hostile_headers(rnd: random.Random) -> list[tuple[str, bytes | None]] | str | None:
    kind = rnd.choice(["none", "none", "some", "trace", "huge", "many", "unreadable"])
    if kind == "none":
        return None
    if kind == "unreadable":
        return UNREADABLE
    if kind == "trace":
        value = rnd.choice([TRACE, TRACE.upper(), b"00-abc", b"x" * 999_000, TRACE + b"x", None])
        return [("traceparent", value)] * rnd.randint(1, 2)
    if kind == "huge":
        return [("traceparent", b"t" * rnd.choice([70_000, 500_000, 999_000]))]
    if kind == "many":
        return [(rnd.choice(["h", "traceparent", "é" * 300, "n" * 5_000]), b"v" * rnd.randrange(3_000))
                for _ in range(rnd.randrange(50, 300))]
    return [(rnd.choice(["", "a", "é", "x" * 30]), rnd.choice([None, b"", rnd.randbytes(rnd.randrange(100))]))
            for _ in range(rnd.randrange(5))]


KINDS = ["junk", "junk", "junk", "valid", "skewed", "forged", "copy", "bad-time", "key", "fast-clock"]


def hostile_record(rnd: random.Random, now: int, honest_oids: list[str], *, base: int = BASE,
                   kinds: list[str] = KINDS) -> Rec:
    """One hostile record, about its own order id unless it interacts (forged, copy: the
    caller fills a copy in). Valid ones are stamped at `base` or before it."""
    side = rnd.choice([Side.PAYMENT, Side.ORDER])
    oid = f"x{rnd.randrange(10**9)}"
    kind = rnd.choice(kinds)
    ts = base - rnd.choice([0, rnd.randrange(10 * T)])
    headers = hostile_headers(rnd)
    key: bytes | None = oid.encode()
    if kind in ("forged", "copy") and honest_oids:
        oid = rnd.choice(honest_oids)
        key = oid.encode()
    if kind == "junk":
        value = hostile_value(rnd, side, oid)
        key = rnd.choice([oid.encode(), None, b"", b"\xff\xfe", b"k" * 70_000])
    elif kind == "valid":  # valid, its own order id, stamped in the past (it may not move progress ahead)
        value = signed_payment(f"p{oid}", oid, ts) if side == Side.PAYMENT else order_value(oid, ts)
    elif kind == "fast-clock":  # valid, its own order id, from a clock up to MAX_FUTURE fast: one moves nothing
        ts = now + rnd.randint(T, MAX_FUTURE)
        value = signed_payment(f"p{oid}", oid, ts) if side == Side.PAYMENT else order_value(oid, ts)
    elif kind == "skewed":  # valid, signed, but paid_at two hours before its event time (a replay)
        side, value = Side.PAYMENT, signed_payment(f"p{oid}", oid, ts, paid_at=ts - 2 * H)
    elif kind == "forged":  # a payment for an honest (or its own) order, signed with another key
        side, value = Side.PAYMENT, signed_payment(f"f{oid}", oid, ts, key=b"another-key-of-32-bytes-length!!")
    elif kind == "copy":  # filled in by the caller: an exact copy of an honest payment
        side, value = Side.PAYMENT, None
    elif kind == "bad-time":
        value = signed_payment(f"p{oid}", oid, base) if side == Side.PAYMENT else order_value(oid, base)
        ts = rnd.choice([1, MIN_EVENT_MS - 1, now + MAX_FUTURE + 10**10, now * 1000, 2**62])
    else:  # "key": a valid record whose key is not its order_id
        value = order_value(oid, ts) if side == Side.ORDER else signed_payment(f"p{oid}", oid, ts)
        key = rnd.choice([b"other", oid.upper().encode(), oid.encode() + b"\x00"])
    return Rec(side, key, value, ts, headers, hostile=kind, oid=oid)


# ---------------------------------------------------------------- the run


class _Unreadable:
    """A consumed record whose header names are not UTF-8: confluent-kafka raises
    SystemError on headers() (seen on the real broker, records written with aiokafka)."""

    def __init__(self, m: Message) -> None:
        self._m = m

    def headers(self) -> Any:
        raise SystemError("<method 'headers' of 'confluent_kafka.cimpl.Message' objects> returned a result with an "
                          "exception set")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._m, name)


def message(rec: Rec, offset: int) -> Message:
    headers = None if rec.headers in (None, UNREADABLE) else rec.headers
    m = Message(topic=TOPICS[rec.side], partition=0, offset=offset, key=rec.key, value=rec.value, headers=headers,
                timestamp=(1, rec.ts) if rec.ts >= 0 else (0, -1))
    return _Unreadable(m) if rec.headers == UNREADABLE else m  # type: ignore[return-value]


@dataclass
class Produced:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class Recorder:
    """The sink: what the join would produce, each checked against the record limit."""

    def __init__(self) -> None:
        self.records: list[Produced] = []
        self.offsets: dict[tuple[str, int], int] = {}

    def produce(self, topic: str, key: bytes | str, value: bytes | None,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        key_b = key.encode() if isinstance(key, str) else key
        self.records.append(Produced(topic, key_b, value, headers or []))
        assert weight(key_b, value, headers) <= RECORD_LIMIT, f"a record to {topic} over the limit"

    def store_offset(self, topic: str, partition: int, offset: int) -> None:
        assert offset > self.offsets.get((topic, partition), -1), "offsets only grow"
        self.offsets[(topic, partition)] = offset

    def stage(self, counter: Any, amount: int = 1) -> None:
        pass

    def stage_latency(self, seconds: float) -> None:
        pass

    def of(self, topic: str) -> list[Produced]:
        return [r for r in self.records if r.topic == topic]


def weight(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None) -> int:
    return (len(key or b"") + len(value or b"")
            + sum(len(k.encode("utf-8", "surrogatepass")) + len(v or b"") for k, v in headers or []))


@dataclass
class Run:
    """What a run decided and wrote."""

    sink: Recorder
    changelog: dict[bytes, bytes | None]
    pipeline: Pipeline | NativePipeline


def run(records: list[Rec], *, s: Settings, now: Callable[[int], int], rnd: random.Random,
        restore_check: Callable[[Any, dict[bytes, bytes | None]], None] | None = None,
        native: bool = False) -> Run:
    """Feed `records` (each side in its order) through a Pipeline (`native`: a
    NativePipeline) in random batches, as a consumer fetches them, with commits (changelog
    written, and `restore_check(pipeline, changelog)` called) at random points.
    `now(step)`: the wall clock at each step."""
    sink = Recorder()
    params = JoinParams(s.order_timeout, s.grace, s.late_horizon, s.hmac_keys)
    pipe: Pipeline | NativePipeline
    if native:
        pipe = NativePipeline(s, params, sink)
        pipe.install({0: native_core.new_core(params)})
    else:
        pipe = Pipeline(s, params, sink)
        pipe.install({0: PartitionJoin(params)})
    sides = ([r for r in records if r.side == Side.PAYMENT], [r for r in records if r.side == Side.ORDER])
    fetched = [0, 0]
    log: dict[bytes, bytes | None] = {}
    step = 0
    slow = rnd.choice([None, None, Side.PAYMENT, Side.ORDER])  # one partition fetched far less (a lagging one)
    while True:
        batch: list[Message] = []
        for side in (Side.PAYMENT, Side.ORDER):
            n = rnd.choice([0, 1, 3, 50, 500]) // (20 if side == slow else 1)
            for rec in sides[side][fetched[side]: fetched[side] + n]:
                batch.append(message(rec, fetched[side]))
                fetched[side] += 1
            if fetched[side] == len(sides[side]):  # librdkafka: the end of partition follows the records
                batch.append(Message(topic=TOPICS[side], partition=0, offset=fetched[side],
                                     error=KafkaError(KafkaError._PARTITION_EOF)))
        step += 1
        wall = now(step)
        pipe.take(batch, wall, 0)
        out = pipe.merge(step * 0.1, lambda _epoch: True,
                         lambda _partition, side, _fetched_to: fetched[side] < len(sides[side]))
        pipe.advance(out, wall)
        done = fetched == [len(sides[0]), len(sides[1])] and not pipe.held_count()
        if done:  # then the wall clock passes every deadline (+ grace): each payment is decided
            last = max((r.ts for r in records if r.ts < wall + MAX_FUTURE), default=wall)
            pipe.advance(pipe.merge(step * 0.1, lambda _epoch: True, lambda _partition, _side, _fetched_to: False),
                         max(wall, last + s.order_timeout + s.grace))
        if done or rnd.random() < 0.2:
            _commit(pipe, log)
            if restore_check is not None:
                restore_check(pipe, log)
        if done:
            return Run(sink, log, pipe)


def _commit(pipe: Pipeline | NativePipeline, log: dict[bytes, bytes | None]) -> None:
    for _partition, key, value in pipe.changes():
        assert weight(key, value, None) <= RECORD_LIMIT, "a changelog record over the limit"
        log[key] = value


# ---------------------------------------------------------------- what the contract says of a record


def accepted(rec: Rec, now_ms: int) -> bool:
    """Whether the join must take `rec` (else: the DLQ), by the models and the contract."""
    headers = rec.headers if isinstance(rec.headers, list) else None
    size = len(rec.key or b"") + len(rec.value or b"") + (intake.header_bytes(headers) if headers else 0)
    if size > intake.MAX_INPUT_BYTES or not MIN_EVENT_MS <= rec.ts <= now_ms + MAX_FUTURE:
        return False
    try:
        model = (Payment if rec.side == Side.PAYMENT else Order).decode(rec.value or b"")
    except ValueError:
        return False
    return rec.key == model.order_id.encode()


def dead_letters(sink: Recorder, dlq_topic: str) -> dict[tuple[str, int], DeadLetter]:
    letters = {}
    for r in sink.of(dlq_topic):
        d = DeadLetter.decode(r.value or b"")
        assert (d.source_topic, d.offset) not in letters, "one letter per record"
        letters[(d.source_topic, d.offset)] = d
    return letters


def decisions(sink: Recorder, s: Settings, oids: set[str]) -> dict[str, list]:
    """The decisions about `oids`, as subscribers read them."""
    from schemas import Anomaly, LateOrder, Recovery

    rec = [Recovery.decode(r.value or b"") for r in sink.of(s.recovery_topic)]
    late = [LateOrder.decode(r.value or b"") for r in sink.of(s.late_topic)]
    anomalies = [Anomaly.decode(r.value or b"") for r in sink.of(s.anomalies_topic)]
    for r in rec:
        assert r.recovery_id == recovery_id_for(r.payment.payment_id)
    return {
        "recovered": sorted(r.payment.payment_id for r in rec if r.order_id in oids),
        "late": sorted((x.order_id, x.payment_id) for x in late if x.order_id in oids),
        "anomalies": sorted((a.kind, a.order_id, tuple(p.payment_id for p in a.payments))
                            for a in anomalies if a.order_id in oids),
    }


def entry_weights(core: PartitionJoin) -> list[int]:
    """What each state entry holds in bytes (records, packed entries, traces)."""
    from streams.join import compact

    out = []
    for e in core.pending.values():
        if type(e) is bytes:
            out.append(len(e))
            trace = compact.trace_of(e)
        else:
            out.append(len(e.raw) + len(e.trace or b""))  # type: ignore[union-attr]
            trace = e.trace  # type: ignore[union-attr]
        assert trace is None or valid_traceparent(trace)
    for o in core.orders.values():
        out.append(len(o.raw) + len(o.paid_raw or b"") + len(o.trace or b""))
        assert o.trace is None or valid_traceparent(o.trace)
    for r in core.recovered.values():
        out.append(len(r.raw) + len(r.trace or b""))
        assert r.trace is None or valid_traceparent(r.trace)
    return out


__all__ = [
    "BASE",
    "KEY",
    "G",
    "H",
    "Rec",
    "T",
    "accepted",
    "decisions",
    "epoch_ms",
    "honest",
    "hostile_record",
    "run",
    "settings",
]
