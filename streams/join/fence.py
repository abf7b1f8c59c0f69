"""The at_least_once commit's fence: exactly_once writes its state in a transaction that the
group coordinator refuses to commit for a member it has dropped (KIP-447); at_least_once
has no transaction, so its commit (checkpoint.Checkpoint, step 2) writes state only under
this fence.

A member the group coordinator has confirmed keeps its partitions for at least its window
(session timeout less one heartbeat interval, membership.Membership.window_s), even if it
is cut off at once. Its changelog records are produced within `write_s` of asking for the
confirmation and delivered within `delivery_s` of being produced or never (the producer's
message.timeout.ms); librdkafka fails expired records in a scan once a second and may
still send one not scanned yet, with 100 ms to go (SCAN_SLACK_S); a record found produced
more than PAUSE_S past `write_s` (the process paused between the check and the produce)
fails the commit, and what is still queued is purged. All of it, with FENCE_MARGIN_S to
spare, fits in the window: nothing written under a confirmation lands after the member's
partitions have moved."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streams.join.producer import JoinProducer
from streams.kafka import config
from streams.retry import Stopped

log = logging.getLogger("slipguard.join")

FENCE_MARGIN_S = 1.0
SCAN_SLACK_S = 1.1
PAUSE_S = 0.2
DELIVERY_MAX_S = 30.0
CONFIRM_ATTEMPTS = 3  # confirmations that each took longer than write_s: the commit fails
CLASSIC_WINDOW_S = (config.SESSION_TIMEOUT_MS - config.HEARTBEAT_INTERVAL_MS) / 1000

Change = tuple[int, bytes, bytes | None]  # (changelog partition, key, value or tombstone)


@dataclass(frozen=True)
class Bounds:
    """How long a changelog record may be delivered after it is produced (`delivery_s`),
    and produced after its confirmation was asked for (`write_s`)."""

    delivery_s: float
    write_s: float

    @classmethod
    def within(cls, window_s: float) -> Bounds:
        spare = window_s - FENCE_MARGIN_S - SCAN_SLACK_S - PAUSE_S
        delivery = min(DELIVERY_MAX_S, max(1.0, 0.6 * spare))
        return cls(delivery, max(0.2, spare - delivery))

    def fits(self, window_s: float) -> bool:
        return self.needs() <= window_s + 1e-9

    def needs(self) -> float:
        return self.write_s + PAUSE_S + self.delivery_s + SCAN_SLACK_S + FENCE_MARGIN_S


class Fence:
    """Confirms this member's ownership before its state is written, with offsets already
    committed of the partitions it holds (remembered here), and keeps every write within
    the bounds of its window."""

    def __init__(self, stopping: Callable[[], bool]) -> None:
        self.stopping = stopping
        self.bounds = Bounds.within(CLASSIC_WINDOW_S)  # the group's own once joined (bound)
        # The group's committed offset of each (topic, partition) held, as read when its
        # pair was taken in and as committed since (None: none was ever committed).
        self.committed: dict[tuple[str, int], int | None] = {}

    def bound(self, window_s: float) -> Bounds:
        self.bounds = Bounds.within(window_s)
        if not self.bounds.fits(window_s):
            log.warning("the group's session timeout less its heartbeat interval is %.1fs, too short to fence this "
                        "worker's at_least_once state writes reliably (%.1fs needed); raise the group's "
                        "consumer.session.timeout.ms", window_s, self.bounds.needs())
        return self.bounds

    def remember(self, committed: Iterable[TopicPartition]) -> None:
        for tp in committed:
            self.committed[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None

    def release(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        self.committed = {k: v for k, v in self.committed.items() if k[1] not in gone}

    def write(self, consumer: Consumer, out: JoinProducer, topic: str, changes: list[Change],
              until: float | None = None) -> float:
        """What a member that lost its partitions without knowing it (cut off past its
        session timeout) could still write after its successor: outputs (commit step 1; at
        worst duplicates, with the same recovery_id); state produced once it is no member
        (refused: confirmed first); state produced while it was one and delivered late
        (never: delivered within the bounds or failed). Left open: a request already on the
        wire that a real network partition holds in TCP buffers past the window, and a
        record produced after a long pause that librdkafka sends in the microseconds before
        the purge.

        `until`: a confirmation still valid until then (monotonic), as an earlier write of
        the same commit returned it; past it, or None, this member is confirmed anew.
        Returns until when this write's confirmation is valid."""
        if until is None or time.monotonic() >= until:
            until = self._confirm(consumer)
        for partition, key, value in changes:
            while True:
                if time.monotonic() >= until:  # a long write (a full queue): confirmed again
                    until = self._confirm(consumer)
                if out.offer(topic, key, value, partition):
                    if time.monotonic() > until + PAUSE_S:  # paused between the check and the produce
                        out.producer.purge(in_queue=True, in_flight=False)
                        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "this worker paused while writing "
                                                        "its state, past its confirmation: the rest is not written"))
                    break
                if self.stopping():
                    raise Stopped("stopped while writing the state to the changelog")
        return until

    def _confirm(self, consumer: Consumer) -> float:
        """Ask the group coordinator whether this member still owns its partitions: a
        synchronous commit of offsets already committed (nothing moves), which it refuses
        for a member it fenced or dropped (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION under the
        classic protocol; UNKNOWN_MEMBER_ID, STALE_MEMBER_EPOCH under KIP-848). Returns until
        when (monotonic) changelog records may be produced under this confirmation."""
        for _ in range(CONFIRM_ATTEMPTS):
            asked = time.monotonic()
            try:
                consumer.commit(offsets=self._probe(consumer), asynchronous=False)
            except KafkaException as exc:
                err = exc.args[0]
                raise KafkaException(KafkaError(err.code(), f"membership not confirmed, no state written: {err.str()}",
                                                fatal=err.fatal())) from exc
            if time.monotonic() < asked + self.bounds.write_s:
                return asked + self.bounds.write_s
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"the group coordinator took longer than "
                                        f"{self.bounds.write_s:.1f}s to confirm this member, {CONFIRM_ATTEMPTS} times"))

    def _probe(self, consumer: Consumer) -> list[TopicPartition]:
        """The committed offsets of the partitions held: committing them again moves nothing.
        A pair none was ever committed for is read from its beginning; its offset 0 says
        as much (auto.offset.reset=earliest), and is used only when no other is at hand."""
        held = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        known = {k: v for k, v in self.committed.items() if k in held}
        probe = [TopicPartition(t, p, o) for (t, p), o in sorted(known.items()) if o is not None]
        if not probe and known:
            t, p = min(known)
            probe = [TopicPartition(t, p, 0)]
        if not probe:
            raise KafkaException(KafkaError(KafkaError._STATE, "no partition held to confirm membership with"))
        return probe
