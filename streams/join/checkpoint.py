"""The commit: one interval's outputs, state changes and consumed offsets made durable as a unit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import Counter

from schemas.headers import OutHeaders
from streams.join import Denied, JoinFailed
from streams.join.fence import SCAN_SLACK_S, Fence
from streams.join.producer import JoinProducer, is_fenced
from streams.kafka.calls import Wedged
from streams.ops import metrics
from streams.retry import Stopped
from streams.settings import Settings

log = logging.getLogger("slipguard.join")

Record = tuple[int, bytes, bytes | None]  # (changelog partition, key, value or tombstone)


def phases(changes: list[Record], stale: list[Record]) -> tuple[list[Record], list[Record]]:
    """at_least_once: a commit's changelog writes, in the order it sends them, each phase
    flushed before the next is sent (Checkpoint, step 2): the new values with the
    tombstones of `stale` keys (a restore found them handled), then the interval's other
    tombstones.

    With no transaction, a failed flush can leave any part of what it sent delivered
    (librdkafka keeps the order of what it delivers, not its gaps: a record that times
    out can be followed by one that lands; enable.gapless.guarantee, off here, would not
    cover timeouts either). So a failed commit leaves some of its new values and none of
    its tombstones (harmless: its records, read again, find what they made; a pending
    payment among them is known before it is read again, changelog.drop_handled), or all of
    its new values and some of its tombstones: a pending payment beside its own
    recovery or pair, which a restore resolves (changelog.drop_handled). A stale key's
    tombstone may land alone: its payment was handled."""
    puts = [c for c in changes if c[2] is not None]
    written = {(partition, key) for partition, key, _ in puts}
    deletes = [c for c in stale if (c[0], c[1]) not in written]  # (a key given a value now: it wins)
    stale_keys = {(partition, key) for partition, key, _ in deletes}
    return deletes + puts, [c for c in changes if c[2] is None and (c[0], c[1]) not in stale_keys]


class Checkpoint:
    """The worker's work since the last commit, and its commit: the one owner of the
    interval's transaction. Work enters only through `produce` (an output) and
    `store_offset` (a record decided: offsets only grow), which begin the transaction
    (exactly_once) when it is not open; counters wait in `stage` until the commit.
    `commit()` takes these steps in order (each is marked "Step N" in the code):

    1. at_least_once: flush the outputs produced since the last commit;
    2. write the net state changes of every pair to its changelog partition;
       at_least_once: only once the group coordinator has confirmed that this member
       still owns its partitions, and within bounds that keep it from landing after the
       partitions' next owner has read them (fence.Fence); and in two phases (`phases`),
       each flushed before the next is sent: (a) the new values, with the tombstones of
       keys a restore found already handled (`delete`), then (b) the other tombstones,
       so that a commit failing part way leaves what a restore can resolve;
    3. exactly_once: send the consumed offsets to the open transaction and commit it, so
       outputs, state and offsets become visible together, or not at all;
       at_least_once: with the state flushed (2b), commit the offsets, so a crash repeats
       work (same recovery_id) but never loses it;
    4. count the committed outputs in the metrics (staged until here).

    A step that fails is retried while its error is retriable (for TXN_RETRY_SECONDS: the
    transaction resumes where it was). Past that, or on an abortable error, the
    transaction is aborted; a producer that is fenced, fatally failed, or hangs in a call
    past its hard deadline is replaced (the new one's init_transactions fences it and
    aborts its transaction). Either way `commit()` returns False and the caller reads the
    uncommitted work again. A stop request while a commit cannot complete abandons it
    (`abandoned`): the broker completes or aborts the open transaction, and whoever owns
    the partitions next reads from the last committed offsets.
    """

    def __init__(self, settings: Settings, consumer: Callable[[], Consumer], stopping: Callable[[], bool]) -> None:
        """`consumer()`: the worker's consumer now (it is replaced when the group refuses it)."""
        self.s, self.consumer, self.stopping = settings, consumer, stopping
        self.eos = settings.processing_guarantee == "exactly_once"
        self.fence = Fence(stopping)  # at_least_once
        self.out = JoinProducer(settings, stopping, delivery_timeout_s=self.fence.bounds.delivery_s)
        self.offsets: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset, decided since the commit
        self.has_work = False  # processed or produced something since the last commit
        self.abandoned = False  # nothing more may be committed or flushed by this process
        self.last_commit = time.monotonic()
        self.staged: dict[Counter, int] = {}  # counter -> outputs produced but not committed yet
        self.staged_latencies: list[float] = []
        self.committing_since: float | None = None  # a commit under way since (monotonic)
        # changelog partition -> keys a restore found already handled (changelog.drop_handled),
        # deleted at the next commit, first
        self.stale: dict[int, list[bytes]] = {}

    def _begin(self) -> None:
        """Work is under way: with exactly_once, inside a transaction (the one place it begins)."""
        self.out.begin()
        self.has_work = True

    def produce(self, topic: str, key: bytes | str, value: bytes | None, headers: OutHeaders | None = None) -> None:
        """An output of this interval: inside its transaction (exactly_once)."""
        self._begin()
        self.out.produce(topic, key, value, headers=headers)

    def store_offset(self, topic: str, partition: int, offset: int) -> None:
        """The record before `offset` of `topic` [`partition`] is decided (offsets only grow)."""
        if not self.has_work:
            self._begin()
        where = (topic, partition)
        if offset > self.offsets.get(where, -1):
            self.offsets[where] = offset

    def bound(self, window_s: float) -> None:
        """at_least_once: the fence for the group's window (Membership.window_s), once joined."""
        if not self.eos:
            self.out.bound_delivery(self.fence.bound(window_s).delivery_s)

    def remember(self, committed: Iterable[TopicPartition]) -> None:
        """The group's committed offsets of pairs taken into the loop (read at assignment,
        and again after a rewind): what the fence confirms membership with."""
        self.fence.remember(committed)

    def release(self, partitions: Iterable[int]) -> None:
        """Pairs handed over or lost: their offsets are no longer this member's to commit."""
        gone = set(partitions)
        self.fence.release(gone)
        self.stale = {p: keys for p, keys in self.stale.items() if p not in gone}

    def delete(self, partition: int, keys: list[bytes]) -> None:
        """Changelog keys of a pair just restored that its restore found already handled
        (changelog.drop_handled): deleted at the next commit, before anything else is."""
        if keys:
            self.stale[partition] = list(keys)
        else:
            self.stale.pop(partition, None)

    def init_transactions(self) -> bool:
        """exactly_once: fence an earlier incarnation of this worker's transactional.id;
        False if a stop came first."""
        return not self.eos or self.out.init_transactions()

    def poll(self) -> None:
        """Serve the producer's delivery reports (between commits)."""
        self.out.poll()

    def stage(self, counter: Counter, amount: int = 1) -> None:
        """Counters of outputs count what was committed: staged here until the commit."""
        self.staged[counter] = self.staged.get(counter, 0) + amount

    def stage_latency(self, seconds: float) -> None:
        """A recovery's detection latency, observed once it is committed."""
        self.staged_latencies.append(seconds)

    def stuck(self, seconds: float) -> bool:
        """A commit has been under way this long: the broker or the group coordinator is
        not answering (a synchronous commit waits for them, and the loop with it)."""
        since = self.committing_since
        return since is not None and time.monotonic() - since > seconds

    def due(self, interval_ms: float) -> bool:
        return self.has_work and (time.monotonic() - self.last_commit) * 1000 >= interval_ms

    def commit(self, changes: Callable[[], list[tuple[int, bytes, bytes | None]]]) -> bool:
        """Commit one interval's work (see the class docstring); False if it was dropped
        and must be read again. `changes`: called once, inside the transaction."""
        if self.abandoned or (not self.has_work and not self.out.in_txn):
            return True
        self.committing_since = time.monotonic()
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in self.offsets.items()]
        try:
            written = self._write_and_commit(offsets, changes)
        except (KafkaException, Wedged, Stopped) as exc:
            self._failed(exc)
            return False
        finally:
            self.has_work = False
            self.committing_since = None
            self.last_commit = time.monotonic()
        # Step 4: count what was committed.
        metrics.JOIN_CHANGELOG_RECORDS.inc(written)
        metrics.JOIN_COMMITS.labels("committed").inc()
        for counter, amount in self.staged.items():
            counter.inc(amount)
        for seconds in self.staged_latencies:
            metrics.JOIN_DETECTION_LATENCY.observe(seconds)
        self.forget()
        return True

    def _write_and_commit(self, offsets: list[TopicPartition],
                          changes: Callable[[], list[tuple[int, bytes, bytes | None]]]) -> int:
        # Step 1 (at_least_once): the outputs first.
        if not self.eos:
            self.out.flush_all()
        # Step 2: the state's net changes, each to its pair's changelog partition.
        self._begin()
        topic = self.s.changelog_topic
        pending = changes()  # (partition, key, value) in the configured format (the record path encodes)
        stale: list[Record] = [(partition, key, None) for partition, keys in self.stale.items() for key in keys]
        consumer = self.consumer()
        if self.eos:
            for partition, key, value in stale + pending:
                self.out.produce(topic, key, value, partition)
        else:
            until = None  # one confirmation for both phases while it lasts (fence.Fence.write)
            for phase in phases(pending, stale):
                if phase:
                    until = self.fence.write(consumer, self.out, topic, phase, until)
                    self.out.flush_all()  # (2a failed: no tombstone is sent)
        # Step 3: offsets with the transaction (exactly_once), or after everything is delivered.
        if self.eos:
            self.out.commit_transaction(offsets, consumer.consumer_group_metadata())
        elif offsets:  # (outputs and state flushed: steps 1 and 2)
            consumer.commit(offsets=offsets, asynchronous=False)
            self.fence.remember(offsets)
        return len(stale) + len(pending)

    # ------------------------------------------------------------ when something fails

    def _failed(self, exc: BaseException) -> None:
        self.forget()
        if isinstance(exc, Stopped):
            self.abandon(exc)
            return
        metrics.JOIN_COMMITS.labels("aborted").inc()
        if isinstance(exc, Wedged):
            self._replace(exc, wedged=True)
            return
        err = exc.args[0]
        if self.out.unfixable is not None:
            topic, cause = self.out.unfixable
            if cause.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise Denied("TOPIC", topic, cause.str()) from None
            raise JoinFailed(f"cannot write to {topic}: {cause.str()}; reading the batch again would fail the same "
                             "way. Check the topic's max.message.bytes and this principal's ACLs") from exc
        if self.eos and not err.fatal() and not is_fenced(err):  # abortable, or retriable for too long
            log.warning("transaction failed (%s); aborting it and reading the batch again", err)
            self._abort()
        elif self.eos:  # fatal: this producer cannot be used again
            self._replace(exc)
        else:
            log.warning("commit failed (%s); reading the uncommitted records again", err)
            self._settle()

    def _settle(self) -> None:
        """at_least_once, a commit failed: what it produced is delivered or failed (within
        the fence's delivery bound) before the state is read back, and its delivery
        failures are not the next commit's."""
        self.out.producer.flush(self.fence.bounds.delivery_s + SCAN_SLACK_S)
        self.out.delivery_failures = 0

    def on_client_error(self, exc: KafkaException) -> None:
        """A client error outside the commit (a produce or begin_transaction refused): a
        fatal producer error (fenced included) gets a new producer, anything else aborts
        the open transaction. The caller reads the uncommitted work again."""
        err = exc.args[0]
        log.warning("Kafka client error outside a commit (%s); reading the uncommitted work again", err)
        metrics.JOIN_COMMITS.labels("aborted").inc()
        if self.eos and (err.fatal() or is_fenced(err)):
            self._replace(exc)
        elif self.out.in_txn:
            self._abort()
        self.forget()

    def _abort(self) -> None:
        try:
            self.out.abort()
        except Stopped as exc:
            self.abandon(exc)

    def _replace(self, cause: BaseException, *, wedged: bool = False) -> None:
        try:
            self.out.replace(cause, wedged=wedged)
        except Stopped as exc:
            self.abandon(exc)

    def drop(self) -> None:
        """Partitions were lost: abort the open transaction, forget what was staged."""
        if self.out.in_txn:
            self._abort()
        self.forget()

    def forget(self) -> None:
        """Drop what was staged for the commit (committed and counted, or read again: the
        restore that follows finds the stale keys again)."""
        self.stale.clear()
        self.staged.clear()
        self.staged_latencies.clear()
        self.offsets.clear()
        self.has_work = False

    def give_up(self) -> None:
        """The worker stops on an error of its own: nothing more is committed or flushed."""
        self.abandoned = True

    def abandon(self, cause: BaseException) -> None:
        log.warning("stopping with a commit that could not complete (%s); the broker completes or aborts "
                    "its transaction, and the partitions' next owner reads from the last committed offsets",
                    cause.args[0] if cause.args else cause)
        self.abandoned = True

    def close(self) -> None:
        if not self.abandoned:
            self.out.close()
