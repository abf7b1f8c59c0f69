"""The native record path (native/, the slipguard_native module built from Rust), as the
join uses it: None where it is not built (the Python core runs), and the conversions
between the models and what the native core takes and gives.

The native core decides a record it decodes itself; a record its decoder is unsure of
(escapes, exponents, anything unusual) is decoded by the model in Python and handed over
as its fields (`payment_fields`, `order_fields`), so both paths decide every record the
model accepts. tests/join/test_native_core.py holds the native core to
streams/join/core.py decision for decision and changelog record for changelog record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

from confluent_kafka import KafkaError, Message

from schemas import Order, Payment, recovery_id_for
from schemas import headers as record_headers
from streams.join import changelog, compact, intake
from streams.join.core import Decisions, Flag, JoinParams, Late, Recover, Side
from streams.join.merge import Unread
from streams.join.outputs import Outputs, Sink
from streams.join.pipeline import Record, internal_error, set_gauges
from streams.ops import metrics
from streams.ops.metrics import JOIN_HOLD_RELEASED as RELEASED
from streams.ops.metrics import JOIN_STAMPED_AHEAD as AHEAD
from streams.settings import Settings

NATIVE: ModuleType | None
try:
    import slipguard_native

    NATIVE = slipguard_native
except ImportError:  # not built (no cargo where it was installed): the Python core runs
    NATIVE = None

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

PaymentFields = tuple[str, str, str, str, str, bool, int, int, dict[str, Any] | None, bytes | None]
OrderFields = tuple[str, str, str, str, int, int, dict[str, Any] | None]


def _when(t: datetime) -> tuple[int, int]:
    """An aware time as microseconds since the epoch and its offset in seconds."""
    offset = t.utcoffset()
    assert offset is not None, "the models keep aware times"
    return (t - EPOCH) // _US, offset // timedelta(seconds=1)


def payment_fields(p: Payment) -> PaymentFields:
    """A payment as the native core's on_payment_fields takes it."""
    us, offset = _when(p.paid_at)
    sig = None if p.signature is None else bytes.fromhex(p.signature)
    return (p.payment_id, p.order_id, p.user_id, str(p.amount), p.currency, p.status == "succeeded", us, offset,
            p.metadata, sig)


def order_fields(o: Order) -> OrderFields:
    us, offset = _when(o.created_at)
    return o.order_id, o.user_id, str(o.amount), o.currency, us, offset, o.metadata


# ---------------------------------------------------------------- the record path, natively


def _model_fields(side: int, raw: bytes) -> PaymentFields | OrderFields:
    """A record the native decoder is unsure of: the model decides (its error goes to the DLQ)."""
    if side == Side.PAYMENT:
        return payment_fields(Payment.decode(raw))
    return order_fields(Order.decode(raw))


def new_core(params: JoinParams) -> Any:
    assert NATIVE is not None
    return NATIVE.Core(params.timeout_ms, params.grace_ms, params.late_horizon_ms, list(params.hmac_keys))


def restore(params: JoinParams, latest: dict[bytes, bytes | None], now_ms: int) -> Any:
    """A native core rebuilt from the last value of each changelog key (as
    changelog.restore_into). Values of older formats whose JSON the native decoder is
    unsure of are first rewritten in format 3 by the Python codec (rare: odd JSON)."""
    core = new_core(params)
    try:
        core.restore(list(latest.items()), now_ms)
    except ValueError:
        core = new_core(params)
        core.restore([(k, v if v is None else changelog.encode(changelog.decode(k, v, now_ms))[1])
                      for k, v in latest.items()], now_ms)
    return core


class NativePipeline:
    """pipeline.Pipeline with the record path native (native/src/batch.rs): the same
    steps, the same outputs, offsets and changelog records (tests/join/test_native_pipeline.py
    holds them equal on the fuzz streams). Python keeps what is rare: dead letters and the
    contract messages of decisions."""

    def __init__(self, settings: Settings, params: JoinParams, sink: Sink) -> None:
        assert NATIVE is not None, "slipguard_native is not built"
        self.s, self.params, self.sink = settings, params, sink
        self.outputs = Outputs(settings, sink)
        self.topic_of = (settings.payments_topic, settings.orders_topic)
        self.native = NATIVE.Pipeline(params.timeout_ms, params.grace_ms, params.late_horizon_ms,
                                      list(params.hmac_keys), settings.payments_topic, settings.orders_topic,
                                      settings.max_future, KafkaError._PARTITION_EOF, intake.REJECTED,
                                      _model_fields, record_headers.unreadable)
        self.now_ms = 0
        self.latest_ok_ms = 0

    @property
    def fed(self) -> int:
        """Records decided or dead-lettered, since the start."""
        return int(self.native.fed)

    def take(self, msgs: list[Message], now_ms: int, epoch: int) -> list[Message]:
        self.now_ms, self.latest_ok_ms = now_ms, now_ms + self.s.max_future
        errors, counts, ahead = self.native.take(msgs, now_ms, epoch)
        for side, topic in enumerate(self.topic_of):
            if counts[side]:
                metrics.JOIN_RECORDS.labels(topic).inc(counts[side])
            if ahead[side]:
                AHEAD.labels(topic).inc(ahead[side])
        return list(errors)

    def merge(self, monotonic: float, trusts: Callable[[int], bool], unread: Unread) -> Decisions:
        letters, offsets, (by_records, by_seconds) = self.native.merge(monotonic, trusts, unread)
        if by_records:
            RELEASED.labels("records").inc(by_records)
        if by_seconds:
            RELEASED.labels("seconds").inc(by_seconds)
        for m, headers, unreadable, kind, detail in letters:
            if kind == "internal":
                internal_error(self.outputs, m, headers, unreadable, detail, self.now_ms)
            else:
                self.outputs.dead_letter(m, headers, unreadable, self._why(kind, detail, m), self.now_ms)
        for side, partition, offset in offsets:
            self.sink.store_offset(self.topic_of[side], partition, offset)
        return Decisions()  # the cores keep their decisions until advance()

    def _why(self, kind: str, detail: Any, m: Message) -> Exception:
        if kind == "model":
            assert isinstance(detail, Exception)
            return detail
        if kind == "size":
            return ValueError(intake.too_big(detail))
        if kind == "key":
            return ValueError(intake.wrong_key(m.key(), detail))
        max_future = self.s.max_future
        return ValueError(intake.bad_time(m.timestamp()[1], self.latest_ok_ms - max_future, max_future))

    def advance(self, out: Decisions, now_ms: int) -> None:
        decisions, (matched, duplicates, ignored) = self.native.advance(now_ms)
        out.matched += matched
        out.duplicates += duplicates
        out.ignored_failed += ignored
        for d in decisions:
            if d[0] == "recover":
                _, oid, record, deadline, traces = d
                out.recoveries.append(Recover(compact.payment(record, oid), deadline, traces))
            elif d[0] == "late":
                _, order, order_ts, pid, lateness, traces = d
                out.late.append(Late(Order.decode(order), order_ts, pid, recovery_id_for(pid), lateness, traces))
            else:
                _, kind, oid, payments, order, traces = d
                out.anomalies.append(Flag(kind, oid, tuple(compact.payment(p, oid) for p in payments),
                                          None if order is None else Order.decode(order), traces))
        self.outputs.emit(out, now_ms)

    def changes(self) -> list[Record]:
        records: list[Record] = self.native.changes()
        fmt = self.s.changelog_format
        if fmt == 2:  # while a release before format 3 may still read it
            return [(p, *changelog.encode(changelog.decode(k, v), 2)) for p, k, v in changelog.written(records, 2)]
        return changelog.written(records, fmt)  # (3: while a release before 4 may)

    def install(self, restored: Mapping[int, Any]) -> None:
        self.native.install(dict(restored))

    def drop(self, parts: Iterable[int]) -> None:
        self.native.drop_pairs(list(parts))

    def clear(self) -> None:
        self.native.clear()

    def partitions(self) -> list[int]:
        return list(self.native.partitions())

    def update_gauges(self, now_ms: int) -> None:
        pending, orders, recovered, oldest = self.native.gauges()
        set_gauges(self.s, len(self.native.partitions()), pending, orders, recovered, oldest, now_ms)

    def pending_count(self) -> int:
        return int(self.native.pending_count())

    def held_count(self) -> int:
        return int(self.native.held_count())

    def stale_ends(self, epoch: int) -> list[tuple[int, int]]:
        return list(self.native.stale_ends(epoch))

    def confirm_end(self, partition: int, side: int, end_offset: int, epoch: int) -> bool:
        return bool(self.native.confirm_end(partition, side, end_offset, epoch))


def uses_native(settings: Settings) -> bool:
    """The core this worker runs: SLIPGUARD_CORE, by default native where it is built."""
    return settings.core == "native" or (settings.core is None and NATIVE is not None)
