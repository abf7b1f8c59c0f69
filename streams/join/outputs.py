"""What the join produces: its decisions as contract messages, and dead letters."""

from __future__ import annotations

import logging

from confluent_kafka import Message
from pydantic import ValidationError

from schemas import Anomaly, DeadLetter, LateOrder, Recovery, recovery_id_for
from schemas.fields import from_epoch_ms
from schemas.headers import headers_for, traceparent
from streams.join.checkpoint import Checkpoint
from streams.join.core import Decisions
from streams.ops import metrics
from streams.ops.logs import safe_error
from streams.settings import Settings

log = logging.getLogger("slipguard.join")


class Outputs:
    """Encodes and produces into the open commit; counters are staged until it commits."""

    def __init__(self, settings: Settings, checkpoint: Checkpoint) -> None:
        self.s, self.checkpoint = settings, checkpoint

    def emit(self, out: Decisions, now_ms: int) -> None:
        ck, s = self.checkpoint, self.s
        if out.matched:
            ck.stage(metrics.JOIN_MATCHED, out.matched)
        if out.duplicates:
            ck.stage(metrics.JOIN_DUPLICATES, out.duplicates)
        if not out:
            return
        ck.begin()
        detected = from_epoch_ms(now_ms)
        for r in out.recoveries:
            p = r.payment
            msg = Recovery(recovery_id=recovery_id_for(p.payment_id), order_id=p.order_id, payment=p,
                           deadline=from_epoch_ms(r.deadline_ms), detected_at=detected)
            ck.out.produce(s.recovery_topic, p.order_id, msg.encode(), headers=headers_for(Recovery, r.traces))
            ck.staged_latencies.append(max(0.0, (now_ms - r.deadline_ms) / 1000))
        for late in out.late:
            lmsg = LateOrder(order_id=late.order.order_id, order=late.order, payment_id=late.payment_id,
                             recovery_id=late.recovery_id, lateness_seconds=late.lateness_ms / 1000)
            ck.out.produce(s.late_topic, late.order.order_id, lmsg.encode(),
                           headers=headers_for(LateOrder, late.traces))
        minimise = s.minimise_personal_data
        for a in out.anomalies:
            payments, order = list(a.payments), a.order
            if minimise:  # their metadata left out (SLIPGUARD_MINIMISE_PERSONAL_DATA)
                payments = [p.model_copy(update={"metadata": None}) for p in payments]
                order = order.model_copy(update={"metadata": None}) if order is not None else None
            amsg = Anomaly(kind=a.kind, order_id=a.order_id, payments=payments, order=order,  # type: ignore[arg-type]
                           detected_at=detected)
            ck.out.produce(s.anomalies_topic, a.order_id, amsg.encode(), headers=headers_for(Anomaly, a.traces))
            ck.stage(metrics.JOIN_ANOMALIES.labels(a.kind))
        if out.recoveries:
            ck.stage(metrics.JOIN_RECOVERED, len(out.recoveries))
            log.debug("recovered %d payment(s) without an order", len(out.recoveries))
        if out.late:
            ck.stage(metrics.JOIN_LATE, len(out.late))

    def dead_letter(self, m: Message, exc: Exception, now_ms: int) -> None:
        ck = self.checkpoint
        ck.begin()
        headers = m.headers()
        dead = DeadLetter.of(topic=m.topic(), partition=m.partition(), offset=m.offset(), timestamp_ms=m.timestamp()[1],
                             headers=headers, key=m.key(), value=m.value(),
                             error=safe_error(exc) if self.s.minimise_personal_data else str(exc),
                             failed_at=from_epoch_ms(now_ms), minimise=self.s.minimise_personal_data)
        ck.out.produce(self.s.dlq_topic, f"{m.topic()}:{m.partition()}:{m.offset()}", dead.encode(),
                       headers=headers_for(DeadLetter, [traceparent(headers)]))
        reason = "invalid" if isinstance(exc, ValidationError) else "rejected"
        ck.stage(metrics.DLQ_RECORDS.labels("join", reason))
        log.warning("record sent to the DLQ: %s", safe_error(exc),
                    extra={"topic": m.topic(), "partition": m.partition(), "offset": m.offset()})
