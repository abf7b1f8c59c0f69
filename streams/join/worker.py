"""One member of the join consumer group: the loop that wires the join's parts.

Payments and orders are co-partitioned (same partition count, keyed by order_id,
murmur2), and the range assignor gives partition p of both topics to the same member;
the state of pair p lives in a PartitionJoin and in partition p of the compacted
changelog topic. Who owns what: the group membership and the consumer (membership.py),
the record path (pipeline.py), the transaction and the offsets (checkpoint.py), how far
each partition has been read (progress.py), state back from the changelog (restore.py).
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from streams.join import Denied, InstanceHeld, JoinFailed, ProtocolRefused, native
from streams.join.checkpoint import Checkpoint
from streams.join.core import JoinParams, Side
from streams.join.membership import Membership, raise_for
from streams.join.native import NativePipeline, uses_native
from streams.join.pipeline import Pipeline
from streams.join.progress import EndWatch, carry_ends, confirm_ends, parse_stats, real_brokers, stall_s
from streams.join.restore import Restorer
from streams.kafka.acls import denied
from streams.kafka.calls import Wedged, bounded, patiently
from streams.kafka.read import cached_high, unfetched
from streams.kafka.topics import TopicLayoutError, check_co_partitioned, ensure_join_topics
from streams.ops import metrics
from streams.retry import Stopped
from streams.settings import Settings

log = logging.getLogger("slipguard.join")

# The commit interval's multiplier while batches come back full (a backlog): at 100 ms, a
# commit every 2 s. Each commit writes the payments still pending to the changelog (and
# their tombstones follow when they match): committing less often while catching up
# writes fewer (delayed workload: 1.33x the events/s, bench-ab). Live traffic commits
# every interval. Catching up, outputs become visible up to 2 s later.
BACKLOG_COMMIT_FACTOR = 20
RESTORE_SLICE = 0.2  # seconds of restore per loop step while other pairs are being processed
READY_COMMIT_S = 2.0  # a commit waiting longer than this: not ready
UNSTARTED_S = 5.0  # a partition not fetching this long after its restore is assigned again (_start_unstarted)


def tune_gc() -> None:
    """Fewer cyclic-GC passes: the join allocates per record but makes no cycles, and each
    pass walks the (large) state. Measured: about 5-10 % less CPU per event."""
    gc.set_threshold(100_000, 50, 1_000)


class JoinWorker:
    def __init__(self, settings: Settings, *, now_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.settings, self.now_ms = settings, now_ms
        self.params = JoinParams(settings.order_timeout, settings.grace, settings.late_horizon, settings.hmac_keys)
        self.topic_of = (settings.payments_topic, settings.orders_topic)
        self.stopping = False
        self.broker_up = True  # from librdkafka's statistics: a broker connection is up
        self.loop_at = time.monotonic()
        self.assigned = False  # an assignment came (readiness)
        self.wake_fetchers = False  # partitions were resumed: wake librdkafka's fetchers (_wake_fetchers)
        self.ends = EndWatch(self.topic_of)  # whether an end of partition counts (after a broker outage)
        self.ends_asked = 0.0  # when _confirm_ends last asked the leaders (monotonic)
        self.consumed_at = time.monotonic()  # when consume() last returned (a stall: progress.EndWatch.stalled)
        self.stall_s = stall_s(settings.grace)
        self.rewind_due = False  # a hand-over's commit failed with partitions kept: read them again (step)
        # Assigned partitions whose seek after their restore was refused (_STATE: not fetching
        # yet): (topic, partition) -> (the offset to start from, when first refused). See
        # _start_unstarted.
        self.unstarted: dict[tuple[str, int], tuple[int, float]] = {}
        metrics.JOIN_ORDER_TIMEOUT.labels(settings.join_group).set(settings.order_timeout / 1000)
        self.membership = Membership(settings, self._on_stats, lambda: self.stopping, self._alive)
        self.checkpoint = Checkpoint(settings, lambda: self.membership.consumer, lambda: self.stopping)
        self.native = uses_native(settings)
        self.pipeline: Pipeline | NativePipeline = (NativePipeline if self.native else Pipeline)(
            settings, self.params, self.checkpoint)
        self.restorer = Restorer(settings, self.params, now_ms, lambda: self.stopping,
                                 native.restore if self.native else None)

    @property
    def consumer(self) -> Consumer:  # (replaced when the group refuses it: membership.py)
        return self.membership.consumer

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
                    self.membership.instance_held(exc)
                except ProtocolRefused as exc:
                    self.membership.protocol_refused(exc)
                    self.checkpoint.bound(self.membership.window_s)
            self.commit()
        except Denied as exc:
            self.checkpoint.give_up()
            name = exc.name or {"GROUP": self.settings.join_group}.get(exc.resource, "")
            raise JoinFailed(denied(self.settings, "join", exc.resource, name)) from None
        except JoinFailed:
            self.checkpoint.give_up()  # nothing more is committed or flushed by this process
            raise
        finally:
            self.close()

    def subscribe(self) -> None:
        """Check the topics (creating the changelog if missing), initialise transactions
        (exactly_once), then join the group."""
        log.info("join core: %s", f"native (slipguard_native {native.NATIVE.__version__})"
                 if self.native and native.NATIVE is not None else "python")
        try:
            said = ensure_join_topics(self.settings, timeout=self.settings.topic_wait / 1000,
                                      stopping=lambda: self.stopping)
        except TopicLayoutError as exc:
            raise JoinFailed(str(exc)) from None
        if said is None:
            return  # stopped
        log.info("%s", said)
        if not self.checkpoint.init_transactions():
            return
        self.membership.join(on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        self.checkpoint.bound(self.membership.window_s)

    @property
    def ready(self) -> bool:
        """/readyz: assigned partitions restored, and the broker reachable by the client's
        statistics and by a commit not waiting long (one waiting holds the loop and them)."""
        return self.assigned and not self.restorer.busy and self.broker_up and not self.checkpoint.stuck(READY_COMMIT_S)

    @property
    def last_loop(self) -> float:
        """/healthz: the loop stepped, or a restore inside it made progress, this recently."""
        return max(self.loop_at, self.restorer.last_step)

    def _alive(self) -> None:  # waiting on purpose (a refused instance id): alive, not ready
        self.loop_at = time.monotonic()

    def _on_stats(self, stats_json: str) -> None:
        # From consume(), once a second: brokers up (readiness), leaders that stayed up (progress.EndWatch).
        try:
            stats = parse_stats(stats_json)
        except ValueError:
            return
        self.broker_up = any(b.get("state") == "UP" for b in real_brokers(stats).values())
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
        msgs = self.consumer.consume(self.settings.batch_size, timeout=0.05)
        if self.unstarted:
            self._start_unstarted(msgs)
        # The wall clock of this consume judges the batch (take, advance): the ends seen, or
        # carried (carry_ends: asked within stall_s of it), say what was in the log then. A
        # clock read after the merge let a slow merge, or a block before it (a restore's
        # committed(), _wake_fetchers), pass a deadline + GRACE on ends older than GRACE: an
        # order appended just after this consume was not fetched, and its payment recovered.
        now = self.now_ms()
        self.loop_at = time.monotonic()
        stood, self.consumed_at = self.loop_at - self.consumed_at, self.loop_at
        confirmed = self.ends.take_confirmed()  # by the previous step: usable in this one only (carry_ends)
        if self.rewind_due:
            self.rewind_due = False
            self._rewind()
            return
        if self.wake_fetchers:
            self._wake_fetchers()
        self.checkpoint.poll()
        if self.restorer.busy:
            self._install(self.restorer.step(RESTORE_SLICE if self.pipeline.partitions() else 1.0))
        raise_for(self.pipeline.take(msgs, now, self.ends.epoch))
        # Caught up, commit every interval: outputs become visible quickly. Working through
        # a backlog (full batches), less often: each commit is a few broker round trips.
        backlog = len(msgs) >= self.settings.batch_size
        stalled = stood > self.stall_s
        if stalled:  # the ends seen until now (this batch's too) may hide what came meanwhile
            self.ends.stalled(stood)
            metrics.JOIN_STALLS.inc()
            self.ends_asked = 0.0  # confirmed with the leaders at the end of this step, not a second later
        elif backlog:  # the queue holds more: records fetched after the ends seen may wait behind them
            self.ends.queued()
        if stalled or backlog:
            # ... but the previous step's confirmations count in this merge if the leaders
            # were asked within stall_s (after a full batch, where librdkafka's cached high
            # watermark is the end read to): progress.carry_ends. The leaders are asked last
            # in a step, after its commit, so a step slower than stall_s (a transaction
            # commit on a loaded machine) does not make every confirmation stale: else, with
            # every step that slow, an idle partition's end never counted.
            carry_ends(self.pipeline, self.topic_of, self.ends, confirmed,
                       lambda topic, partition: cached_high(self.consumer, topic, partition), self.stall_s,
                       full=backlog)
        # Confirmed at the end of the step, used by the next step's merge: a consume comes
        # between, which brings (and so un-ends) what was appended while the leader was
        # asked. Used at once (tried in 011dd60), a confirmation answered just before orders
        # a held-up producer appended recovered 9 payments 241 ms after those orders were in
        # the log (CI rehearsal, the transaction-coordinator test, a 5 s stall of the
        # machine). A full batch or a stall in between makes it stale (queued(), stalled())
        # except as carry_ends allows (above): else, while every batch came back full, an
        # idle partition's end never counted and its payments were never recovered by the
        # clock.
        decisions = self.pipeline.merge(time.monotonic(), self.ends.trusts, self._unread)
        self.pipeline.advance(decisions, now)
        if self.checkpoint.due(self.settings.commit_interval * (BACKLOG_COMMIT_FACTOR if backlog else 1)):
            self.commit()
        if self.ends.settled and time.monotonic() - self.ends_asked >= 1.0:
            self._confirm_ends(every=stalled)

    def _unread(self, partition: int, side: Side, fetched_to: int) -> bool:
        """merge's question after HOLD_MAX_SECONDS: records left to fetch (librdkafka issue 1854)?"""
        return unfetched(self.consumer, self.topic_of[side], partition, fetched_to)

    def commit(self, *, handing_over: bool = False) -> None:
        """Commit (checkpoint.Checkpoint); work that could not be committed is read again:
        the partitions handed over by their next owner, the ones kept (KIP-848 moves only
        some) by this worker, once the hand-over is done (rewind_due: their outputs went
        with the aborted transaction, and only reading them again emits them)."""
        if not self.checkpoint.commit(self.pipeline.changes) and not self.checkpoint.abandoned:
            if handing_over:
                self.rewind_due = True
            else:
                self._rewind()
        self.pipeline.update_gauges(self.now_ms())

    def _confirm_ends(self, *, every: bool = False) -> None:
        """After a broker outage, an end seen before it does not count; an idle partition
        is not signalled again, so its leader is asked (progress.confirm_ends). Once a
        second; without a stale end nothing is asked."""
        self.ends_asked = time.monotonic()

        def ask(stale: list[TopicPartition]) -> list[TopicPartition] | None:
            try:
                return bounded(lambda: self.consumer.offsets_for_times(stale, timeout=2), "read the partitions' ends",
                               3, stopping=lambda: self.stopping)
            except (KafkaException, Wedged) as exc:  # asked again in a second
                log.debug("could not read the partitions' ends: %s", exc)
                return None

        confirm_ends(self.pipeline, self.topic_of, self.ends, ask, every=every)

    def _rewind(self) -> None:
        """Forget uncommitted work: state from the changelog, positions from the committed offsets."""
        self.checkpoint.forget()
        parts = sorted({tp.partition for tp in self.consumer.assignment()})
        self.pipeline.clear()
        restored = self.restorer.restore_now(parts)
        if restored is not None:
            self._install(restored)

    # ------------------------------------------------------------ rebalance and restore

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Take the partitions at once, paused: pairs not held yet are restored beside the
        loop while the pairs already held go on (KIP-848 moves only some)."""
        metrics.REBALANCES.labels(self.settings.join_group, "assign").inc()
        for tp in partitions:  # assigned anew: judged from its own restore, not an earlier one's
            self.unstarted.pop((tp.topic, tp.partition), None)
        self.assigned = True
        self.membership.accepted()
        try:
            patiently(lambda: check_co_partitioned(self.restorer.watermarks, self.settings), "read topic metadata",
                      stopping=lambda: self.stopping)
        except TopicLayoutError as exc:
            raise JoinFailed(str(exc)) from None
        except KafkaException as exc:
            raise JoinFailed(f"cannot read topic metadata: {exc.args[0]}") from None
        if self.membership.protocol == "consumer":
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        held = self.pipeline.partitions()
        parts = sorted({tp.partition for tp in partitions} - set(held))
        consumer.pause([tp for tp in partitions if tp.partition in parts])
        log.info("assigned partitions %s; restoring their state", parts)
        self.restorer.start(parts)
        self.wake_fetchers = bool(held)  # the pairs kept go on (see _wake_fetchers)

    def _install(self, restored: Mapping[int, Any]) -> None:
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
        self.checkpoint.remember(committed)
        for p in restored:
            self.checkpoint.delete(p, self.restorer.handled.pop(p, []))
        self.consumer.resume(assigned)
        now = time.monotonic()
        for tp in committed:
            target = TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
            self.unstarted.pop((tp.topic, tp.partition), None)
            try:
                self.consumer.seek(target)
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError._STATE and self._assigned(target):  # not fetching yet: _start_unstarted
                    self.unstarted[(tp.topic, tp.partition)] = (target.offset, now)
                    log.debug("%s [%d] is not fetching yet (%s): positioned once it is", tp.topic, tp.partition, err)
                else:  # revoked meanwhile: its next owner starts from the committed offset
                    log.warning("cannot position %s [%d]: %s", tp.topic, tp.partition, err)
        self.pipeline.install(restored)
        self.wake_fetchers = True
        self.pipeline.update_gauges(self.now_ms())

    def _assigned(self, tp: TopicPartition) -> bool:
        return any(a.topic == tp.topic and a.partition == tp.partition for a in self.consumer.assignment())

    def _start_unstarted(self, msgs: list[Any]) -> None:
        """Partitions whose seek after their restore was refused with _STATE: librdkafka had
        not started their fetch. Most are only waiting for their start offset (the
        assignment's committed-offset lookup, in flight or retried) and start on their own:
        each step, right after its consume, they are sought again (not one that brought a
        record or an end in this batch: it is fetching, and a seek would read it again).
        One still refused UNSTARTED_S after its restore never started: an assign and the
        pause right after it (the assign callback pauses what it restores) can make
        librdkafka drop the assign's fetch start as outdated (librdkafka issue 2190, open;
        #5591 the same family), and an orphaned offset lookup leaves it so too. Nothing is
        said and the partition is never read: a CI rehearsal of d1dc58c lost an orders
        partition so (its worker never committed all its input; "cannot position ...
        orders [1]: ... Erroneous state" at the first assignment and again at a rewind 30 s
        later). Under KIP-848 it is assigned again (incremental_unassign and assign, at the
        offset the seek was for), here, right after a consume that served any rebalance
        callback: the calls answer a revocation the worker has not seen only if one came
        after the consume's last look at its queue (review of c94c2f6: inside the restore
        they would, whenever one was queued; narrower here, not closed: review of
        031b135), and probed again. Under the classic protocol's eager assignor a
        partition cannot be assigned alone: said at ERROR, counted, and left to the next
        rebalance. Only a record or an end shows a partition fetching: a consumer error
        naming it (an offset lookup that failed) leaves it unstarted."""
        fetched = {(m.topic(), m.partition()) for m in msgs
                   if m.error() is None or m.error().code() == KafkaError._PARTITION_EOF} if msgs else set()
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        now, late = time.monotonic(), []
        for key, (offset, since) in list(self.unstarted.items()):
            target = TopicPartition(key[0], key[1], offset)
            if key in fetched or key not in assigned:
                del self.unstarted[key]
                continue
            try:
                self.consumer.seek(target)
                del self.unstarted[key]
                log.info("%s [%d] is fetching now, %.1fs after its restore", key[0], key[1], now - since)
                continue
            except KafkaException as exc:
                if exc.args[0].code() not in (KafkaError._STATE, KafkaError._PREV_IN_PROGRESS):
                    del self.unstarted[key]
                    log.warning("cannot position %s [%d]: %s", key[0], key[1], exc.args[0])
                    continue
            if now - since >= UNSTARTED_S:
                late.append(target)
        if late:
            self._restart_fetch(late, now)

    def _restart_fetch(self, targets: list[TopicPartition], now: float) -> None:
        """See _start_unstarted."""
        names = ", ".join(f"{tp.topic} [{tp.partition}] at {tp.offset}" for tp in targets)
        if self.membership.protocol != "consumer":
            metrics.JOIN_FETCH_RESTARTS.inc(len(targets))
            for tp in targets:
                del self.unstarted[(tp.topic, tp.partition)]
            log.error("the fetch of %s has not started %.0fs after its restore (librdkafka issue 2190): the classic "
                      "protocol's eager assignor cannot assign it alone; it is read after the next rebalance "
                      "(restart this worker to have it now)", names, UNSTARTED_S)
            return
        log.warning("the fetch of %s has not started %.0fs after its restore (librdkafka issue 2190): assigning it "
                    "again", names, UNSTARTED_S)
        try:
            self.consumer.incremental_unassign(targets)
            self.consumer.incremental_assign(targets)
        except KafkaException as exc:  # (the assignment changed under it: probed again next step)
            log.warning("could not assign %s again: %s", names, exc.args[0])
            return
        metrics.JOIN_FETCH_RESTARTS.inc(len(targets))
        for tp in targets:
            self.unstarted[(tp.topic, tp.partition)] = (tp.offset, now)  # probed again: it must start

    def _wake_fetchers(self) -> None:
        """After partitions were resumed: a broker thread left with nothing to fetch while a
        rebalance callback paused every partition sleeps its idle wait (1 s) and is not
        woken by the resume (bench-failover, KIP-848, librdkafka's fetch debug log). A
        ListOffsets request through each leader wakes it; the answer is not needed."""
        self.wake_fetchers = False
        held = set(self.pipeline.partitions())
        query = [TopicPartition(tp.topic, tp.partition, OFFSET_END) for tp in self.consumer.assignment()
                 if tp.partition in held]
        if not query:
            return
        try:
            bounded(lambda: self.consumer.offsets_for_times(query, timeout=2), "wake the fetchers", 3,
                    stopping=lambda: self.stopping)
        except (KafkaException, Wedged) as exc:  # only later: the fetchers wake within 1 s anyway
            log.debug("could not wake the fetchers: %s", exc)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels(self.settings.join_group, "revoke").inc()
        parts = {tp.partition for tp in partitions}
        log.info("revoked partitions %s; committing and handing them over", sorted(parts))
        self.commit(handing_over=True)  # hand the partitions over with everything done so far committed
        self._drop(parts)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels(self.settings.join_group, "lost").inc()
        parts = {tp.partition for tp in partitions}
        log.warning("lost partitions %s (session timed out?); dropping uncommitted work", sorted(parts))
        self.checkpoint.drop()
        self._drop(parts)
        self.rewind_due = bool(self.pipeline.partitions())  # any kept had their uncommitted work dropped too

    def _drop(self, parts: set[int]) -> None:
        for key in [key for key in self.unstarted if key[1] in parts]:
            del self.unstarted[key]
        self.checkpoint.release(parts)
        self.restorer.cancel(parts)
        self.pipeline.drop(parts)
        self.pipeline.update_gauges(self.now_ms())
