"""What the join produces: its decisions as contract messages, and dead letters."""

from __future__ import annotations

import logging
from typing import Protocol

from confluent_kafka import Message
from prometheus_client import Counter
from pydantic import ValidationError

from schemas import Anomaly, DeadLetter, LateOrder, Recovery, dlq, recovery_id_for
from schemas.fields import from_epoch_ms
from schemas.headers import Headers, OutHeaders, headers_for, traceparent
from streams.join.core import Decisions
from streams.ops import metrics
from streams.ops.logs import safe_error
from streams.settings import Settings

log = logging.getLogger("slipguard.join")


class Sink(Protocol):
    """Where the record path's work goes: the open commit (checkpoint.Checkpoint), or a
    test's recorder."""

    def produce(self, topic: str, key: bytes | str, value: bytes | None, headers: OutHeaders | None = None) -> None: ...

    def store_offset(self, topic: str, partition: int, offset: int) -> None: ...

    def stage(self, counter: Counter, amount: int = 1) -> None: ...

    def stage_latency(self, seconds: float) -> None: ...


class Outputs:
    """Encodes and produces into the open commit; counters are staged until it commits."""

    def __init__(self, settings: Settings, sink: Sink) -> None:
        self.s, self.sink = settings, sink

    def emit(self, out: Decisions, now_ms: int) -> None:
        sink, s = self.sink, self.s
        if out.matched:
            sink.stage(metrics.JOIN_MATCHED, out.matched)
        if out.duplicates:
            sink.stage(metrics.JOIN_DUPLICATES, out.duplicates)
        if not out:
            return
        detected = from_epoch_ms(now_ms)
        for r in out.recoveries:
            p = r.payment
            msg = Recovery(recovery_id=recovery_id_for(p.payment_id), order_id=p.order_id, payment=p,
                           deadline=from_epoch_ms(r.deadline_ms), detected_at=detected)
            sink.produce(s.recovery_topic, p.order_id, msg.encode(), headers_for(Recovery, r.traces))
            sink.stage_latency(max(0.0, (now_ms - r.deadline_ms) / 1000))
        for late in out.late:
            lmsg = LateOrder(order_id=late.order.order_id, order=late.order, payment_id=late.payment_id,
                             recovery_id=late.recovery_id, lateness_seconds=late.lateness_ms / 1000)
            sink.produce(s.late_topic, late.order.order_id, lmsg.encode(), headers_for(LateOrder, late.traces))
        minimise = s.minimise_personal_data
        for a in out.anomalies:
            payments, order = list(a.payments), a.order
            if minimise:  # their metadata left out (SLIPGUARD_MINIMISE_PERSONAL_DATA)
                payments = [p.model_copy(update={"metadata": None}) for p in payments]
                order = order.model_copy(update={"metadata": None}) if order is not None else None
            amsg = Anomaly(kind=a.kind, order_id=a.order_id, payments=payments, order=order, detected_at=detected)
            sink.produce(s.anomalies_topic, a.order_id, amsg.encode(), headers_for(Anomaly, a.traces))
            sink.stage(metrics.JOIN_ANOMALIES.labels(a.kind))
        if out.recoveries:
            sink.stage(metrics.JOIN_RECOVERED, len(out.recoveries))
            log.debug("recovered %d payment(s) without an order", len(out.recoveries))
        if out.late:
            sink.stage(metrics.JOIN_LATE, len(out.late))

    def dead_letter(self, m: Message, headers: Headers | None, unreadable: str | None, exc: Exception,
                    now_ms: int, reason: str | None = None) -> None:
        """`m` to the DLQ, with its headers as read once (None and why, if they could not
        be): building the letter cannot fail (schemas.dlq.encoded). `reason`: the metric's
        label, by default from the error."""
        minimise = self.s.minimise_personal_data
        error = safe_error(exc) if minimise else f"{exc}"
        if unreadable:
            error = f"{error}; {unreadable}"
        value = dlq.encoded(topic=m.topic(), partition=m.partition(), offset=m.offset(),
                            timestamp_ms=m.timestamp()[1], headers=headers, key=m.key(), value=m.value(),
                            error=error, failed_at=from_epoch_ms(now_ms), minimise=minimise,
                            headers_unreadable=bool(unreadable))
        self.sink.produce(self.s.dlq_topic, f"{m.topic()}:{m.partition()}:{m.offset()}", value,
                          headers_for(DeadLetter, [traceparent(headers)]))
        label = reason or ("invalid" if isinstance(exc, ValidationError) else "rejected")
        self.sink.stage(metrics.DLQ_RECORDS.labels("join", label))
        log.warning("record sent to the DLQ: %s", safe_error(exc),
                    extra={"topic": m.topic(), "partition": m.partition(), "offset": m.offset()})
