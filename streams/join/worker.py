"""One member of the join consumer group: the loop that wires the join's parts.

Payments and orders are co-partitioned (same partition count, keyed by order_id,
murmur2), and the range assignor gives partition p of both topics to the same member;
the state of pair p lives in a PartitionJoin and in partition p of the compacted
changelog topic.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import time

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from streams.join import Denied, InstanceHeld, JoinFailed, ProtocolRefused
from streams.kafka.acls import denied
from streams.join.checkpoint import Checkpoint
from streams.join.core import JoinParams, PartitionJoin, Side
from streams.join.ends import EndWatch
from streams.join.merge import Pair
from streams.join.outputs import Outputs
from streams.join.pipeline import Pipeline
from streams.join.restore import Restorer
from streams.kafka import config
from streams.kafka.calls import Wedged, bounded, patiently
from streams.kafka.groups import tune_group_timeouts
from streams.kafka.read import unfetched
from streams.kafka.versions import offers_kip848
from streams.kafka.topics import TopicLayoutError, check_co_partitioned, ensure_join_topics
from streams.ops import metrics
from streams.retry import Stopped
from streams.settings import Settings

log = logging.getLogger("slipguard.join")

BACKLOG_COMMIT_FACTOR = 5  # commit interval multiplier while batches come back full
RESTORE_SLICE = 0.2  # seconds of restore per loop step while other pairs are being processed
FETCH_QUEUE_BACKOFF_MS = 10  # a partition that finds the fetch queue full asks again this soon (_consumer_conf)


def tune_gc() -> None:
    """Fewer cyclic-GC passes: the join allocates per record but makes no cycles, and each
    pass walks the (large) state. Measured: about 5-10 % less CPU per event."""
    gc.set_threshold(100_000, 50, 1_000)


def group_protocol_conf(protocol: str, instance_id: str | None = None) -> dict[str, object]:
    """Both give partition p of payments and orders to the same member (co-partitioning):
    classic with the client-side range assignor (eager: every member revokes everything on
    every change); consumer (KIP-848) with the broker's range assignor, which moves only
    the partitions that change owner. Under KIP-848 the session timeout is the broker's
    (group.consumer.session.timeout.ms, 45 s by default), so a crashed member's partitions
    move later than with classic's 10 s.

    Static membership (group.instance.id = SLIPGUARD_INSTANCE_ID) with KIP-848 only: a
    worker stopped cleanly leaves with epoch -2, the broker keeps its partitions for it
    for the session timeout, and the same instance started again takes them back with no
    rebalance: the other members' partitions do not move (a rolling restart moves
    nothing). After kill -9 the broker refuses the instance id (UNRELEASED_INSTANCE_ID,
    fatal in librdkafka) until the dead member's session expires: the worker starts a new
    consumer and asks again (JoinWorker._instance_held). Not with classic: after a broker
    outage longer than the session timeout, librdkafka rejoins and is then fenced by its
    own new membership (a fatal error; librdkafka issue 3437), seen here on a broker
    killed and restarted under load."""
    if protocol == "consumer":
        return {"group.protocol": "consumer", "group.remote.assignor": "range", "group.instance.id": instance_id,
                "session.timeout.ms": None, "heartbeat.interval.ms": None, "partition.assignment.strategy": None}
    return {"partition.assignment.strategy": "range"}


HELD_RETRY_S = 2.0  # a refused instance id: ask again after this long
HELD_MARGIN_S = 5.0  # still refused 2 x the session timeout + this: another live worker has the id
READY_COMMIT_S = 2.0  # a commit waiting longer than this: not ready


class JoinWorker:
    def __init__(self, settings: Settings, *, now_ms=lambda: int(time.time() * 1000)) -> None:
        self.s, self.now_ms = settings, now_ms
        self.params = JoinParams(settings.order_timeout, settings.grace, settings.late_horizon, settings.hmac_keys)
        self.sides = {settings.payments_topic: Side.PAYMENT, settings.orders_topic: Side.ORDER}
        self.topic_of = (settings.payments_topic, settings.orders_topic)
        self.stopping = False
        self.broker_up = True  # from librdkafka's statistics: a broker connection is up
        self.loop_at = time.monotonic()
        self.assigned = False  # an assignment came (readiness)
        self.wake_fetchers = False  # partitions were resumed: wake librdkafka's fetchers (_wake_fetchers)
        self.ends = EndWatch(self.topic_of)  # whether an end of partition counts (after a broker outage)
        self.ends_asked = 0.0  # when _confirm_ends last asked the leaders (monotonic)
        metrics.JOIN_ORDER_TIMEOUT.labels(settings.join_group).set(settings.order_timeout / 1000)
        # auto: KIP-848 where the broker offers it; refused, classic (_protocol_refused).
        self.protocol = "classic" if settings.group_protocol == "classic" else "consumer"
        self.consumer = Consumer(self._consumer_conf())
        self.held_since: float | None = None  # the instance id refused since (monotonic)
        self.session_s = 45.0  # the group's KIP-848 session timeout (tune_group_timeouts)
        self.checkpoint = Checkpoint(settings, self.consumer, lambda: self.stopping)
        self.pipeline = Pipeline(settings, self.params, Outputs(settings, self.checkpoint), self.checkpoint.begin)
        self.pairs: dict[int, Pair] = self.pipeline.pairs
        self.restorer = Restorer(settings, self.params, now_ms, lambda: self.stopping)

    def _consumer_conf(self) -> dict[str, object]:
        conf = {"enable.partition.eof": True, "fetch.max.bytes": 52_428_800, "max.partition.fetch.bytes": 1_048_576,
                # The partitions' fetch queues all forward to one queue, and each partition
                # compares that queue's length with queued.min.messages: in a backlog, a
                # partition that finds it full backs off fetch.queue.backoff.ms (1 s by
                # default), and an unlucky one can go unfetched for seconds while its pair's
                # other partition is fetched (librdkafka issue 1854). Its pair's records
                # then wait in `held` (merge: up to HOLD_MAX_RECORDS while it has records
                # left to fetch; before that rule, HOLD_MAX_SECONDS released them into
                # pending state). Measured on the spread bench: with 1 s, 2 of 2 runs released
                # 18,000-198,000 records that way (peak pending 17,800-35,600); with 10 ms,
                # none in 2 runs (peak 455-477), at the same events/s and CPU.
                "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
                # Readiness follows the broker connections (see _on_stats).
                "statistics.interval.ms": 1_000, "stats_cb": self._on_stats,
                **group_protocol_conf(self.protocol, self.s.instance_id)}
        return {k: v for k, v in config.consumer(self.s, self.s.join_group, **conf).items() if v is not None}

    # ------------------------------------------------------------ lifecycle

    def run(self, *, max_seconds: float | None = None) -> None:
        """Consume until stop() (SIGTERM/SIGINT) or max_seconds; then commit and leave the group."""
        started = time.monotonic()
        try:
            self.subscribe()
            while not self.stopping and not self.checkpoint.abandoned:
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    break
                try:
                    self.step()
                except KafkaException as exc:  # a produce or begin_transaction refused
                    self.checkpoint.on_client_error(exc)
                    self._rewind()
                except Stopped as exc:
                    self.checkpoint.abandon(exc)
                except InstanceHeld as exc:
                    self._instance_held(exc)
                except ProtocolRefused as exc:
                    self._protocol_refused(exc)
            self.commit()
        except Denied as exc:
            self.checkpoint.abandoned = True
            name = exc.name or {"GROUP": self.s.join_group}.get(exc.resource, "")
            raise JoinFailed(denied(self.s, "join", exc.resource, name)) from None
        except JoinFailed:
            self.checkpoint.abandoned = True  # nothing more is committed or flushed by this process
            raise
        finally:
            self.close()

    def subscribe(self) -> None:
        """Check the topics (creating the changelog if missing), initialise transactions
        (exactly_once), then join the group."""
        try:
            said = ensure_join_topics(self.s, timeout=self.s.topic_wait / 1000, stopping=lambda: self.stopping)
        except TopicLayoutError as exc:
            raise JoinFailed(str(exc)) from None
        if said is None:
            return  # stopped
        log.info("%s", said)
        if self.checkpoint.eos and not self.checkpoint.out.init_transactions():
            return
        if self.protocol == "consumer" and offers_kip848(self.s) is False:
            self._protocol_refused(ProtocolRefused("no broker version of ConsumerGroupHeartbeat that librdkafka "
                                                   "speaks: Kafka before 4.0"), subscribe=False)
        if self.protocol == "consumer":
            said, self.session_s = tune_group_timeouts(self.s, self.s.join_group)
            log.log(logging.INFO if self.session_s <= config.SESSION_TIMEOUT_MS / 1000 else logging.WARNING, "%s", said)
        self._subscribe_consumer()

    def _subscribe_consumer(self) -> None:
        log.info("joining group %s with group protocol %s%s", self.s.join_group, self.protocol,
                 f" as static member {self.s.instance_id}" if self.protocol == "consumer" and self.s.instance_id else "")
        self.consumer.subscribe(list(self.topic_of), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    def _instance_held(self, exc: InstanceHeld) -> None:
        """The coordinator refuses SLIPGUARD_INSTANCE_ID: held by a killed predecessor until
        its session expires, or by a live worker given the same id. The refused consumer
        cannot be used again (a fatal error): wait, start a new one and ask again. A
        predecessor's session expires within the session timeout; refused for twice that
        (plus HELD_MARGIN_S), the id is a live worker's: stop with one line."""
        now = time.monotonic()
        if self.held_since is None:
            self.held_since = now
            log.warning("the group coordinator refuses SLIPGUARD_INSTANCE_ID=%s: another member still holds it "
                        "(a predecessor killed without leaving holds it until its session expires, the broker's "
                        "group.consumer.session.timeout.ms); asking again every %.0fs", self.s.instance_id,
                        HELD_RETRY_S)
        elif now - self.held_since > 2 * self.session_s + HELD_MARGIN_S:
            raise JoinFailed(f"another live worker of group {self.s.join_group} runs with SLIPGUARD_INSTANCE_ID="
                             f"{self.s.instance_id}: the group coordinator still refuses it after "
                             f"{now - self.held_since:.0f}s; give each worker its own id") from exc
        self._new_consumer(wait=HELD_RETRY_S)

    def _protocol_refused(self, exc: ProtocolRefused, *, subscribe: bool = True) -> None:
        """The broker does not offer KIP-848 (its ApiVersions before joining, see
        streams/kafka/versions.py, or a fatal error at the first heartbeat): with `auto`,
        join with classic instead (one line); asked for `consumer` explicitly, stop with
        one line."""
        if self.s.group_protocol == "consumer":
            raise JoinFailed(f"the broker refuses the KIP-848 consumer group protocol ({exc}): it needs Kafka 4.0 "
                             "or later with `consumer` in group.coordinator.rebalance.protocols; set "
                             "SLIPGUARD_GROUP_PROTOCOL=classic (or auto) for this cluster") from None
        log.warning("the broker does not offer the KIP-848 consumer group protocol (Kafka before 4.0, or "
                    "group.coordinator.rebalance.protocols without consumer): group %s joins with the classic "
                    "protocol (eager range assignor: every rebalance moves and restores every partition)",
                    self.s.join_group)
        self.protocol = "classic"
        self._new_consumer(wait=0.0, subscribe=subscribe)

    def _new_consumer(self, *, wait: float, subscribe: bool = True) -> None:
        """A consumer that failed fatally cannot be used again: close it, wait, start anew."""
        self.consumer.close()
        give_up = time.monotonic() + wait
        while not self.stopping and time.monotonic() < give_up:
            self.loop_at = time.monotonic()  # waiting on purpose: alive (/healthz), not ready
            time.sleep(0.1)
        self.consumer = self.checkpoint.consumer = Consumer(self._consumer_conf())
        if subscribe and not self.stopping:
            self._subscribe_consumer()

    @property
    def ready(self) -> bool:
        """/readyz: assigned partitions restored, and the broker reachable: by the client's
        statistics (served while the loop consumes) and by a commit not waiting for long
        (a commit that waits for an absent broker holds the loop, and the statistics with it)."""
        return self.assigned and not self.restorer.busy and self.broker_up and not self.checkpoint.stuck(READY_COMMIT_S)

    @property
    def last_loop(self) -> float:
        """/healthz: the loop stepped, or a restore inside it made progress, this recently."""
        return max(self.loop_at, self.restorer.last_step)

    def _on_stats(self, stats_json: str) -> None:
        # Served from consume(), once a second: which brokers (not bootstrap stand-ins) are up,
        # and whether the leaders of the assigned partitions stayed up (ends.EndWatch).
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        brokers = stats.get("brokers", {}).values()
        self.broker_up = any(b.get("state") == "UP" for b in brokers if b.get("nodeid", -1) >= 0)
        self.ends.observe(stats)

    def stop(self, *_: object) -> None:
        self.stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def close(self) -> None:
        try:
            self.consumer.close()  # leaves the group; on_revoke commits what is left
        finally:
            self.restorer.close()
            self.checkpoint.close()

    # ------------------------------------------------------------ the loop

    def step(self) -> None:
        """One batch: consume, decide, produce; commit when the interval has passed."""
        msgs = self.consumer.consume(self.s.batch_size, timeout=0.05)
        self.loop_at = time.monotonic()
        if self.wake_fetchers:
            self._wake_fetchers()
        self.checkpoint.poll()
        if self.restorer.busy:
            self._restore_some()
        self.pipeline.take(msgs, self.now_ms(), self.ends.epoch)
        monotonic = time.monotonic()
        out = self.pipeline.merge(monotonic, self.ends.trusts, self._unread)
        if self.ends.settled and monotonic - self.ends_asked >= 1.0:
            self._confirm_ends()
        self.pipeline.advance(out, self.now_ms())
        # Caught up, commit every interval: outputs become visible quickly. Working through
        # a backlog (full batches), less often: each commit is a few broker round trips.
        backlog = len(msgs) >= self.s.batch_size
        if self.checkpoint.due(self.s.commit_interval * (BACKLOG_COMMIT_FACTOR if backlog else 1)):
            self.commit()

    def _unread(self, pair: Pair, side: Side) -> bool:
        """merge's question, asked only when a hold has lasted HOLD_MAX_SECONDS: has this
        partition records left to fetch (a partition starved by librdkafka issue 1854)?"""
        return unfetched(self.consumer, self.topic_of[side], pair.partition, pair.fetched_to[side])

    def commit(self, *, handing_over: bool = False) -> None:
        """Commit (checkpoint.Checkpoint); work that could not be committed is read again,
        unless the partitions are being handed over (their next owner reads it)."""
        if (not self.checkpoint.commit(self.pipeline.offsets(), self.pipeline.changes) and not handing_over
                and not self.checkpoint.abandoned):
            self._rewind()
        self.pipeline.update_gauges(self.now_ms())

    def _confirm_ends(self) -> None:
        """After a broker outage (ends.EndWatch), an end seen before it does not count. A
        partition that had reached its end and stayed idle is not signalled again, so ask
        each leader for the partition's end (one ListOffsets request per leader; with
        read_committed the last stable offset) and trust the end where nothing is unread.
        Where something is, its records are on their way and their own end will follow.
        Called once a second; without a stale end it asks nothing."""
        self.ends_asked = time.monotonic()
        epoch = self.ends.epoch
        stale = [TopicPartition(self.topic_of[side], p, OFFSET_END) for p, pair in self.pairs.items()
                 for side in (Side.PAYMENT, Side.ORDER)
                 if pair.fetch_end[side] and pair.end_epoch[side] != epoch]
        if not stale:
            return
        try:
            ends = bounded(lambda: self.consumer.offsets_for_times(stale, timeout=2), "read the partitions' ends", 3,
                           stopping=lambda: self.stopping)
        except (KafkaException, Wedged) as exc:  # asked again in a second
            log.debug("could not read the partitions' ends: %s", exc)
            return
        confirmed = 0
        for tp in ends:
            pair, side = self.pairs.get(tp.partition), self.sides[tp.topic]
            if (pair is not None and tp.error is None and tp.offset >= 0 and pair.fetch_end[side]
                    and pair.fetched_to[side] >= tp.offset and epoch == self.ends.epoch):
                pair.end_epoch[side] = epoch
                confirmed += 1
        if confirmed:
            log.info("after the broker was away: %d of %d ends of partition confirmed", confirmed, len(stale))

    def _rewind(self) -> None:
        """Forget uncommitted work: state from the changelog, positions from the committed offsets."""
        self.checkpoint.forget()
        parts = sorted({tp.partition for tp in self.consumer.assignment()})
        self.pairs.clear()
        restored = self.restorer.restore_now(parts)
        if restored is not None:
            self._install(restored)

    # ------------------------------------------------------------ rebalance and restore

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Take the partitions at once, paused: pairs not held yet are restored beside the
        loop (_restore_some) while the pairs already held go on (KIP-848 moves only some)."""
        metrics.REBALANCES.labels(self.s.join_group, "assign").inc()
        self.assigned = True
        if self.held_since is not None:
            log.info("SLIPGUARD_INSTANCE_ID=%s accepted after %.0fs", self.s.instance_id,
                     time.monotonic() - self.held_since)
            self.held_since = None
        try:
            patiently(lambda: check_co_partitioned(self.restorer.watermarks, self.s), "read topic metadata",
                      stopping=lambda: self.stopping)
        except TopicLayoutError as exc:
            raise JoinFailed(str(exc)) from None
        except KafkaException as exc:
            raise JoinFailed(f"cannot read topic metadata: {exc.args[0]}") from None
        if self.protocol == "consumer":
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        parts = sorted({tp.partition for tp in partitions} - set(self.pairs))
        consumer.pause([tp for tp in partitions if tp.partition in parts])
        log.info("assigned partitions %s; restoring their state", parts)
        self.restorer.start(parts)
        self.wake_fetchers = bool(self.pairs)  # the pairs kept go on (see _wake_fetchers)

    def _restore_some(self) -> None:
        self._install(self.restorer.step(RESTORE_SLICE if self.pairs else 1.0))

    def _install(self, restored: dict[int, PartitionJoin]) -> None:
        """Take restored pairs into the loop: from their committed offsets (a seek after the
        resume: a pause right after an assign can lose the assigned position, librdkafka
        issue 2190), records read meanwhile dropped."""
        if not restored:
            return
        assigned = [tp for tp in self.consumer.assignment() if tp.partition in restored]
        try:
            committed = patiently(lambda: self.consumer.committed(assigned, timeout=10),
                                  "read the group's committed offsets", stopping=lambda: self.stopping)
        except KafkaException as exc:
            raise JoinFailed(f"cannot read the group's committed offsets: {exc.args[0]}") from exc
        self.consumer.resume(assigned)
        for tp in committed:
            try:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition,
                                                  tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
            except KafkaException as exc:  # revoked meanwhile: its next owner starts from the committed offset
                log.warning("cannot position %s [%d]: %s", tp.topic, tp.partition, exc.args[0])
        self.pipeline.install(restored)
        self.wake_fetchers = True
        self.pipeline.update_gauges(self.now_ms())

    def _wake_fetchers(self) -> None:
        """Called at the loop step after partitions were resumed. librdkafka pauses every
        assigned partition while a rebalance callback runs and resumes them when it is
        done; a broker thread left with nothing to fetch meanwhile sleeps for its fixed
        idle wait (1 s) and is not woken by the resume, so the partitions kept (and those
        just restored) stopped for up to 1 s more (seen in bench-failover's KIP-848 case,
        with librdkafka's fetch debug log). A ListOffsets request through each partition
        leader wakes its broker thread at once; the answer is not needed."""
        self.wake_fetchers = False
        held = [tp for tp in self.consumer.assignment() if tp.partition in self.pairs]
        if not held:
            return
        query = [TopicPartition(tp.topic, tp.partition, OFFSET_END) for tp in held]
        try:
            bounded(lambda: self.consumer.offsets_for_times(query, timeout=2), "wake the fetchers", 3,
                    stopping=lambda: self.stopping)
        except (KafkaException, Wedged) as exc:  # only later: the fetchers wake within 1 s anyway
            log.debug("could not wake the fetchers: %s", exc)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels(self.s.join_group, "revoke").inc()
        parts = {tp.partition for tp in partitions}
        log.info("revoked partitions %s; committing and handing them over", sorted(parts))
        self.commit(handing_over=True)  # hand the partitions over with everything done so far committed
        self._drop(parts)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels(self.s.join_group, "lost").inc()
        parts = {tp.partition for tp in partitions}
        log.warning("lost partitions %s (session timed out?); dropping uncommitted work", sorted(parts))
        self.checkpoint.drop()
        self._drop(parts)

    def _drop(self, parts: set[int]) -> None:
        self.restorer.cancel(parts)
        self.pipeline.drop(parts)
        self.pipeline.update_gauges(self.now_ms())

