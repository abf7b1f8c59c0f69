"""A hand-over whose commit fails, under KIP-848, where a member keeps some of its partitions.

Under the consumer protocol (KIP-848) a member joining takes only some partitions from
the others: the one revoking them commits everything done so far (one transaction over
all its partitions, kept ones included) and hands them over. When that commit fails, the
transaction is aborted: the outputs of the kept partitions go with it. The worker cannot
rewind inside the rebalance callback, so it marks the rewind due and reads the kept
partitions again once the callback has returned (JoinWorker.rewind_due). Without that, the kept
partitions' recoveries, aborted, were never emitted again: 24 recoveries lost in the
cluster suite when a group coordinator was killed during a rebalance (2026-12-07).

The worker under test runs in this process, so that the failure can be made to happen at
that moment: its transaction's commit, called from the revoke callback, fails as the
producer reports a coordinator gone for longer than it retries (producer.retrying).
Everything else is real: the broker, the group, the transaction that is aborted, and a
second worker process joining."""

from __future__ import annotations

import threading
import time

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.join.worker import JoinWorker
from tests.integration.test_join import _historical, _owned, _settings
from tests.integration.workers import assert_recovered_once, start, stop


def test_a_failed_commit_while_handing_over_some_partitions_rereads_the_kept_ones(base_settings, tmp_path) -> None:
    # Commits only when the test says (the first on the hand-over), so that the aborted
    # transaction holds the recoveries of every partition.
    s = _settings(base_settings, partitions=6, group_protocol="consumer", commit_interval="1h",
                  processing_guarantee="exactly_once")
    exp = _historical(s, 600, seed=29)  # every deadline passed: recovered as soon as read
    worker = JoinWorker(s)
    revoking: list[bool] = []
    failed: list[dict[str, object]] = []
    rewinds: list[list[int]] = []  # the partitions held at each rewind

    def on_revoke(consumer, partitions: list[TopicPartition]) -> None:
        revoking.append(True)
        try:
            JoinWorker._on_revoke(worker, consumer, partitions)
        finally:
            revoking.pop()
        if failed and "rewind_due" not in failed[0]:
            failed[0]["rewind_due"] = worker.rewind_due

    def rewind() -> None:
        rewinds.append(sorted(worker.pipeline.partitions()))
        JoinWorker._rewind(worker)

    commit_transaction = worker.checkpoint.out.commit_transaction

    def failing_once(offsets: list[TopicPartition], group_metadata: object) -> None:
        if revoking and not failed:
            failed.append({"staged": sum(worker.checkpoint.staged.values())})
            raise KafkaException(KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE,
                                            "injected: the coordinator went away during the hand-over", retriable=True))
        commit_transaction(offsets, group_metadata)

    worker._on_revoke = on_revoke  # type: ignore[method-assign]
    worker._rewind = rewind  # type: ignore[method-assign]
    worker.checkpoint.out.commit_transaction = failing_once  # type: ignore[method-assign]
    other_log = tmp_path / "other.log"
    other = None
    try:
        worker.subscribe()

        def read(until, what: str, timeout: float = 60) -> None:
            deadline = time.monotonic() + timeout
            while not until():
                assert time.monotonic() < deadline, what
                worker.step()

        def read_to_end() -> bool:
            positions = worker.consumer.position(worker.consumer.assignment())
            return all(tp.offset >= worker.consumer.get_watermark_offsets(tp, timeout=5)[1] for tp in positions)

        read(lambda: len(worker.pipeline.partitions()) == 6 and read_to_end(),
             "the worker took all six partitions and read every input")
        read(lambda: worker.checkpoint.staged, "its recoveries were produced (in the open transaction)")
        other = start(s, ["join"], other_log, commit_interval="200ms", instance_id=None)
        read(lambda: failed, "a member joined and this one handed some partitions over", timeout=90)
        kept = set(worker.pipeline.partitions())
        assert kept and len(kept) < 6, f"KIP-848 moves only some partitions: kept {sorted(kept)}"
        assert failed[0]["staged"], "the aborted transaction held outputs"
        assert failed[0]["rewind_due"], "the kept partitions are to be read again"
        read(lambda: rewinds[:1] == [sorted(kept)], "the kept partitions were rewound after the callback")
        read(lambda: _owned(other_log), "the other worker restored the partitions it took", timeout=90)
        # From here on the worker commits as usual, in a loop of its own, until every
        # recovery is out: the kept partitions' from it, the others' from the other worker.
        worker.settings = worker.settings.derive(commit_interval="200ms")
        done, errors = threading.Event(), []

        def loop() -> None:
            try:
                while not done.is_set():
                    worker.step()
            except BaseException as exc:  # noqa: BLE001 (reported below)
                errors.append(exc)

        stepping = threading.Thread(target=loop)
        stepping.start()
        try:
            assert_recovered_once(s, exp.recovered)
        finally:
            done.set()
            stepping.join()
        assert not errors, errors
    finally:
        if other is not None:
            assert stop(other) == 0, other_log.read_text()[-3000:]
        worker.close()
