"""The recovery writer's committed offsets reach the end of what it can read.

Its topics are written by the join in Kafka transactions: each committed (or aborted)
transaction leaves a marker (a control record) in each partition it wrote, and an aborted
transaction's records stay in the log. A read_committed consumer is never given those
offsets; once the writer has written every row, its group must still have committed up
to the last stable offset (LSO) of every partition, so that it shows no lag.
"""

from __future__ import annotations

import json
import time

import psycopg
from confluent_kafka import Consumer, IsolationLevel, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from streams.cli import main
from streams.kafka import config
from tests.integration.test_recover import _recovery, _wait_rows, writer_settings
from tests.integration.workers import start, stop


def _stable_ends(s, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """Each partition's end as a read_committed consumer sees it: the last stable offset."""
    admin = AdminClient(config.admin(s))
    asked = {TopicPartition(t, p): OffsetSpec.latest() for t, p in tps}
    done = admin.list_offsets(asked, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=10)
    return {(tp.topic, tp.partition): f.result(30).offset for tp, f in done.items()}


def _committed(s, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    c = Consumer(config.consumer(s, s.recover_group, **{"isolation.level": "read_uncommitted"}))
    try:
        got = c.committed([TopicPartition(t, p) for t, p in tps], timeout=10)
        return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in got}
    finally:
        c.close()


def _data_offsets(s, topic: str, partitions: int) -> dict[int, list[int]]:
    """The offsets a read_committed reader is given, per partition (the rest: markers, aborted)."""
    c = Consumer(config.consumer(s, "offsets-reader", **{"enable.partition.eof": True}))
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got: dict[int, list[int]] = {p: [] for p in range(partitions)}
    at_end: set[int] = set()
    deadline = time.monotonic() + 30
    try:
        while len(at_end) < partitions and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                if m.error() is None:
                    got[m.partition()].append(m.offset())
                elif m.error().code() == -191:  # _PARTITION_EOF
                    at_end.add(m.partition())
    finally:
        c.close()
    return got


def test_committed_offsets_reach_the_last_stable_offset_past_markers_and_aborted_records(base_settings, tmp_path,
                                                                                         capsys) -> None:
    s = writer_settings(base_settings)
    tps = [(t, p) for t in (s.recovery_topic, s.late_topic) for p in range(s.partitions)]
    writer = start(s, ["recover"], tmp_path / "recover.log")
    producer = Producer(config.producer(s, transactional_id=f"{s.join_group}-lagtest"))
    producer.init_transactions(30)
    written = 0
    try:
        # As the join writes: many small transactions, a marker after each, while the writer
        # reads; now and then one aborted (its records stay in the log, never read).
        n = 0
        for txn in range(60):
            producer.begin_transaction()
            size = 1 + txn % 5
            for i in range(n, n + size):
                r = _recovery(i)
                producer.produce(s.recovery_topic, r.encode(), r.order_id.encode())
            if txn % 7 == 3:
                producer.abort_transaction(30)
            else:
                producer.commit_transaction(30)
                written += size
            n += size
            time.sleep(0.02)
        # Each partition ends with a committed transaction: its records, then its marker.
        producer.begin_transaction()
        for p in range(s.partitions):
            r = _recovery(n + p)
            producer.produce(s.recovery_topic, r.encode(), r.order_id.encode(), partition=p)
        producer.commit_transaction(30)
        written += s.partitions
        _wait_rows(s, written)
        ends = _stable_ends(s, tps)
        deadline = time.monotonic() + 5
        committed = _committed(s, tps)
        while committed != ends and time.monotonic() < deadline:
            time.sleep(0.2)
            committed = _committed(s, tps)
        if committed != ends:
            data = _data_offsets(s, s.recovery_topic, s.partitions)
            behind = {tp: (committed[tp], end) for tp, end in ends.items() if committed[tp] != end}
            skipped = {p: sorted(set(range(ends[(s.recovery_topic, p)])) - set(offs)) for p, offs in data.items()}
            raise AssertionError(f"(committed, LSO) behind: {behind}; offsets never given to a read_committed "
                                 f"reader (markers, aborted records): {skipped}")
        capsys.readouterr()
        assert main(["lag", "--group", s.recover_group, "--json", f"--bootstrap-servers={s.bootstrap_servers}"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert {(r["topic"], r["partition"]) for r in rows} >= {tp for tp, end in ends.items() if end}
        assert [r for r in rows if r["lag"] != 0 or r["lag_seconds"] not in (0, None)] == [], "no lag"
    finally:
        assert stop(writer) == 0, (tmp_path / "recover.log").read_text()[-2000:]
    with psycopg.connect(s.database_url.get_secret_value()) as conn:
        assert conn.execute("SELECT count(*) FROM recovery_audit").fetchone()[0] == written, "no aborted record"
