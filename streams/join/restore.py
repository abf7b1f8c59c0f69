"""State back from the changelog: each assigned pair's partition of the changelog read to
its end, beside the worker's loop, a little at each step.

The worker pauses a pair's input partitions while it is restored, and keeps processing
the pairs it already has: a rebalance that moves some partitions stops none of the others.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from streams.join import Denied, JoinFailed, changelog
from streams.join.core import JoinParams, PartitionJoin
from streams.kafka import config
from streams.kafka.calls import Wedged, bounded, patiently
from streams.ops import metrics
from streams.settings import Settings

log = logging.getLogger("slipguard.join")

Latest = dict[bytes, bytes | None]  # a changelog partition: the last value read per key
RESTORE_STALL_SECONDS = 120.0  # a restore without progress for this long gives up
_EOF = KafkaError._PARTITION_EOF


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand the memory a restore freed back to the OS. A restore reads the changelog's
    churn (every record the log cleaner has not removed yet), and the C allocator keeps
    the pages the client's buffers and records used: restoring 50 live entries from
    600,000 records left a process at 237 MB of RSS, 61 MB after malloc_trim (measured
    2026-12-07), and the soak's workers, restoring again after each fault, rose to 1.1 GB.
    glibc's malloc_trim(0) releases the free pages of every arena; it takes milliseconds."""
    if _TRIM is not None:
        _TRIM(0)


@dataclass
class _Job:
    started: float
    high: int | None = None  # the changelog partition's end when the restore started
    position: int = OFFSET_BEGINNING  # next offset to read
    # key -> last value read; a key whose last record is a tombstone is left out, so this
    # holds the partition's live state, not every key of its history: until the log
    # cleaner has run, the changelog holds a record and a tombstone for nearly every
    # payment that was pending across a commit (test_join_restore).
    latest: dict[bytes, bytes | None] = field(default_factory=dict)
    done: bool = False


class Restorer:
    """Restores pairs from the changelog: `start()` them, call `step()` from the loop,
    which gives back each pair whose state is complete.

    Read (read_committed) to the log end as it is at the start, not to the last stable
    offset: the previous owner's last transaction may still be completing, its state
    committed but its markers not yet written. An open transaction of a dead worker holds
    the stable end back until the broker aborts it (transaction.timeout.ms, checked every
    10 s by default). So a restore waits as long as it makes progress or is waiting for
    that, and gives up after RESTORE_STALL_SECONDS without any.
    """

    def __init__(self, settings: Settings, params: JoinParams, now_ms: Callable[[], int],
                 stopping: Callable[[], bool], native: Callable[[JoinParams, Latest, int], Any] | None = None) -> None:
        """`native`: restores a native core (streams.join.native.restore); None: the Python core."""
        self.s, self.params, self.now_ms, self.stopping = settings, params, now_ms, stopping
        self.native = native
        self.topic = settings.changelog_topic
        # Large fetches: a restore reads whole partitions as fast as it can. A short fetch
        # wait: the end of a partition is known only from an empty fetch, which the broker
        # otherwise holds for fetch.wait.max.ms (500 ms), and the pair waits for it. (The
        # short fetch.queue.backoff.ms of config.consumer matters most here: with
        # librdkafka's 1 s a restore emptied its queue, then waited.)
        self.consumer = Consumer(config.consumer(settings, f"{settings.join_group}-restore",
                                                 **{"enable.partition.eof": True, "fetch.max.bytes": 104_857_600,
                                                    "fetch.wait.max.ms": 10,
                                                    "max.partition.fetch.bytes": 16_777_216,
                                                    "queued.max.messages.kbytes": 262_144}))
        self.watermarks = self._new_watermarks()
        self.jobs: dict[int, _Job] = {}
        # partition -> keys its last restore found already handled (changelog.drop_handled):
        # the worker has the next commit delete them (Checkpoint.delete)
        self.handled: dict[int, list[bytes]] = {}
        self.resolve = settings.processing_guarantee != "exactly_once"
        self.known = False  # the changelog's metadata is in the restore consumer's cache
        self.last_progress = time.monotonic()
        self.last_step = time.monotonic()

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    def start(self, parts: list[int]) -> None:
        new = [p for p in parts if p not in self.jobs]
        if not new:
            return
        now = time.monotonic()
        if not self.jobs:
            self.last_progress = now
        for p in new:
            self.jobs[p] = _Job(started=now)
        self._learn_topic()
        self._assign()

    def cancel(self, parts: set[int]) -> None:
        """Stop restoring these (revoked or lost meanwhile)."""
        dropped = [p for p in parts if self.jobs.pop(p, None) is not None]
        if dropped:
            self._assign()

    def step(self, seconds: float) -> dict[int, Any]:
        """Read for up to `seconds`; once every pair under way is complete, return them."""
        now = self.last_step = time.monotonic()
        unknown = [p for p, job in self.jobs.items() if job.high is None]
        if unknown:
            for p, high in self._log_ends(unknown).items():
                job = self.jobs[p]
                job.high, job.done = high, high == 0
        give_up = now + seconds
        jobs = self.jobs
        while not all(job.done for job in jobs.values()):
            left = give_up - time.monotonic()
            if left <= 0 or self.stopping():
                break
            read = 0
            for m in self.consumer.consume(10_000, timeout=min(left, 0.1)):
                found = jobs.get(m.partition() or 0)
                if found is None or found.done:
                    continue
                job = found
                err = m.error()
                if err is not None:
                    if err.code() == _EOF and m.offset() >= (job.high or 0):  # type: ignore[operator]
                        job.done = True
                    elif err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                        raise Denied("TOPIC", self.topic, err.str())
                    elif err.code() != _EOF:
                        log.warning("changelog read error: %s", err)
                    continue
                read += 1
                offset: int = m.offset()  # type: ignore[assignment]
                value = m.value()
                if value is None:  # a tombstone: the key holds no state (and a restore installs none)
                    job.latest.pop(m.key(), None)  # type: ignore[arg-type]
                else:
                    job.latest[m.key()] = value  # type: ignore[index]
                job.position = offset = offset + 1
                if offset >= job.high:  # type: ignore[operator]
                    job.done = True
            if read:
                self.last_progress = time.monotonic()
        self.last_step = time.monotonic()
        if self.last_step - self.last_progress > RESTORE_STALL_SECONDS and not all(j.done for j in jobs.values()):
            waiting = sorted(p for p, j in jobs.items() if not j.done)
            raise JoinFailed(f"restoring {self.topic} partitions {waiting} made no progress for "
                             f"{RESTORE_STALL_SECONDS:.0f}s; is the broker reachable and the topic readable?")
        if not all(job.done for job in jobs.values()):
            return {}
        return self._finish(list(jobs))  # together: one restore, one log line, as they were assigned

    def restore_now(self, parts: list[int]) -> dict[int, Any] | None:
        """Restore these (and whatever else is under way) before returning; None if a stop came first."""
        self.start(parts)
        restored: dict[int, Any] = {}
        while self.busy:
            if self.stopping():
                return None
            restored.update(self.step(0.5))
        return restored

    def close(self) -> None:
        self.consumer.close()
        self.watermarks.close()

    # ------------------------------------------------------------ helpers

    def _learn_topic(self) -> None:
        """The changelog's metadata first: assigned a topic it does not know yet, the
        consumer starts fetching about 0.5 s later than when it knows it (0.56 s against
        0.06 s to the first record, measured on the local broker)."""
        if self.known:
            return
        try:
            self.consumer.list_topics(self.topic, timeout=5)
            self.known = True
        except KafkaException as exc:  # the assignment finds it anyway, later
            log.debug("changelog metadata not read ahead: %s", exc)

    def _assign(self) -> None:
        self.consumer.assign([TopicPartition(self.topic, p, job.position) for p, job in self.jobs.items()])

    def _finish(self, parts: list[int]) -> dict[int, Any]:
        """The pairs' cores (PartitionJoin, or native cores), rebuilt from what was read."""
        if not parts:
            return {}
        now_ms = self.now_ms()
        cores: dict[int, Any] = {}
        started = min(self.jobs[p].started for p in parts)
        collecting = gc.isenabled()
        gc.disable()  # a burst of long-lived objects and no cycles: collections here only cost (~15 %)
        try:
            for p in sorted(parts):
                job = self.jobs.pop(p)
                # A failed at_least_once commit's leftovers, out before either core sees them.
                # Not looked for under exactly_once, whose commits are atomic: it costs about
                # 0.45 s per million pending entries and 0.3 s per million bundled pairs
                # (20-30 % of a native restore). A group switched from at_least_once keeps a
                # leftover of its last failed commit: a payment pending beside its recovery or
                # pair, recovered (again) at its deadline.
                self.handled[p] = (changelog.drop_handled(job.latest, self.params.timeout_ms) if self.resolve
                                   else [])
                if self.native is not None:
                    cores[p] = self.native(self.params, job.latest, now_ms)
                    continue
                core = cores[p] = PartitionJoin(self.params)
                changelog.restore_into(core, job.latest, now_ms)
        finally:
            if collecting:
                gc.enable()
        took = time.monotonic() - started
        metrics.JOIN_RESTORE_SECONDS.observe(took)
        self._assign()
        release_freed_memory()
        sizes = [core.sizes() for core in cores.values()]
        handled = sum(len(self.handled[p]) for p in cores)
        if handled:
            log.warning("restored partitions %s: %d payments pending beside their own recovery or matched pair "
                        "(a failed at_least_once commit's leftovers) are not pending; deleting them", sorted(cores),
                        handled)
        log.info("restored partitions %s in %.2fs: %d pending payments, %d orders, %d recovered remembered",
                 sorted(cores), took, sum(x[0] for x in sizes), sum(x[1] for x in sizes), sum(x[2] for x in sizes))
        return cores

    def _new_watermarks(self) -> Consumer:
        # Log ends of the changelog. A consumer's watermark query, not the admin client's
        # list_offsets: admin requests that time out while the broker is away can abort
        # the process inside librdkafka (enq_once assertion, librdkafka issue 4605).
        return Consumer(config.consumer(self.s, f"{self.s.join_group}-watermarks",
                                        **{"isolation.level": "read_uncommitted"}))

    def _log_ends(self, parts: list[int]) -> dict[int, int]:
        """Each partition's high watermark, from a read_uncommitted consumer: for a
        read_committed client librdkafka answers with the last stable offset instead. The
        query can ignore its timeout while a partition's leader is away (librdkafka issue
        2588, confluent-kafka-python issue 413), so it has a hard deadline too."""
        def ends() -> dict[int, int]:
            return {p: self.watermarks.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                    for p in parts}

        def query() -> dict[int, int]:
            try:
                return bounded(ends, f"read the end of {self.topic}", 20, stopping=self.stopping)
            except (KafkaException, Wedged) as exc:
                # Next time a fresh client, in case this one's metadata is stale (seen as
                # FENCED_LEADER_EPOCH after the broker was frozen and came back). A wedged
                # one is left to its thread, not closed under it.
                if not isinstance(exc, Wedged):
                    self.watermarks.close()
                self.watermarks = self._new_watermarks()
                if isinstance(exc, Wedged):
                    raise KafkaException(KafkaError(KafkaError._TIMED_OUT, str(exc))) from exc
                raise

        try:
            return patiently(query, f"read the end of {self.topic}", stopping=self.stopping)
        except KafkaException as exc:
            raise JoinFailed(f"cannot read the end of {self.topic}: {exc.args[0]}") from exc
