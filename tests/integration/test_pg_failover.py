"""The writer's commits against a primary with a synchronous standby, then a failover
(tests/integration/pg_failover.py), and the way back (stack.sh pg-failback). The failover
under live traffic, with the join, the writer and the lag exporter as processes, is a fault
test of the cluster's (tests/cluster/test_faults.py), and of the soak's (tests/cluster/soak.py)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import psycopg

from streams.recover.writer import Record, Writer
from tests.integration.pg_failover import STANDBY, failover
from tests.integration.test_recover import _recovery, writer_settings


def test_a_commit_the_synchronous_standby_did_not_confirm_is_not_acknowledged(base_settings) -> None:
    """Two writers, each with a batch whose COMMIT waits for the synchronous standby (its
    WAL sender stopped). One wait is cancelled (pg_cancel_backend, as an operator clears a
    stuck session): PostgreSQL reports the COMMIT done, with a WARNING, its rows on the
    primary alone. The other writer's session is terminated (pg_terminate_backend): the
    COMMIT is done locally, the writer is told nothing, retries, and finds its rows
    present, so its retry writes nothing and waits for no standby. Neither batch may be
    acknowledged on that. The primary is then killed and the standby promoted: every
    record acknowledged must have its rows there, once."""
    primary = base_settings.database_url.get_secret_value()
    acked: dict[str, list[int]] = {"cancelled": [], "terminated": []}

    async def send_dead_letter(*_: object) -> None:
        raise AssertionError("no record of these is a dead letter")

    def acker(name: str):
        async def ack(token: int) -> None:
            acked[name].append(token)
        return ack

    with failover(primary) as f:
        s = writer_settings(base_settings, with_topics=False)
        schema = s.database_url.get_secret_value()  # the primary, in the test's schema
        s = s.derive(database_url=f.both(schema))

        async def run() -> dict[str, list[int]]:
            writers = {name: Writer(s, send_dead_letter) for name in acked}
            for n, (name, writer) in enumerate(writers.items()):
                await writer.connection()
                for i in range(5 * n, 5 * n + 5):
                    record = Record(s.recovery_topic, n, i, None, [], b"k", _recovery(i).encode(), token=i)
                    await writer.add(record, acker(name))
            since = f.frozen_walsender()
            flushing = [asyncio.ensure_future(writer.flush(acker(name))) for name, writer in writers.items()]
            with psycopg.connect(primary, autocommit=True) as conn:
                for name, writer in writers.items():
                    pid = writer.conn.info.backend_pid
                    await asyncio.to_thread(f.wait_for_a_commit_the_standby_lacks, since, pid)
                    end = "pg_cancel_backend" if name == "cancelled" else "pg_terminate_backend"
                    assert conn.execute(f"SELECT {end}(%s)", (pid,)).fetchone() == (True,)
            await asyncio.sleep(2)  # the cancelled COMMIT has returned; the terminated writer has retried
            before_the_kill = {name: list(tokens) for name, tokens in acked.items()}
            await asyncio.to_thread(f.kill_primary)
            await asyncio.to_thread(f.promote)
            await asyncio.wait_for(asyncio.gather(*flushing), 60)
            for writer in writers.values():
                if writer.conn is not None:
                    await writer.conn.close()
            return before_the_kill

        before_the_kill = asyncio.run(run())
        with psycopg.connect(f.on_standby(schema)) as conn:
            rows = conn.execute("SELECT payment_id, count(*) FROM orders GROUP BY 1").fetchall()
            audit = conn.execute("SELECT payment_id, outcome, count(*) FROM recovery_audit GROUP BY 1, 2").fetchall()
    assert sorted(rows) == [(f"pay-{i}", 1) for i in range(10)], "every row once on the new primary"
    assert sorted(audit) == [(f"pay-{i}", "inserted", 1) for i in range(10)], "every audit row once"
    assert before_the_kill == {"cancelled": [], "terminated": []}, \
        "acknowledged while the synchronous standby had not confirmed the commit"
    assert acked == {"cancelled": [0, 1, 2, 3, 4], "terminated": [5, 6, 7, 8, 9]}


def test_a_failback_loses_no_committed_row_and_a_second_failover_and_failback_work_too(base_settings) -> None:
    """After a failover (the primary killed -9, the standby promoted), stack.sh pg-failback
    puts the stack back as pg-standby-up left it: the primary on its own port, a
    synchronous standby. A client inserts a row per transaction through the multi-host URL
    all along, and keeps the ids whose COMMIT returned. Every row the promoted node held
    just before the failback, and every row acknowledged, must be on the primary afterwards,
    and new rows go there; twice."""
    primary = base_settings.database_url.get_secret_value()
    tag = f"fb{uuid.uuid4().hex[:8]}"
    with failover(primary) as f:
        with psycopg.connect(primary, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {tag}")
            conn.execute(f"CREATE TABLE {tag}.rows (id bigint PRIMARY KEY)")
        both = f.both(primary)
        acked: list[int] = []
        stop = threading.Event()

        def write() -> None:
            conn: psycopg.Connection | None = None
            i = 0
            while not stop.is_set():
                try:
                    if conn is None:
                        conn = psycopg.connect(both, autocommit=True, connect_timeout=2)
                    i += 1
                    conn.execute(f"INSERT INTO {tag}.rows VALUES (%s)", (i,))
                    acked.append(i)
                except psycopg.Error:
                    if conn is not None:
                        conn.close()
                    conn = None
                    stop.wait(0.05)
            if conn is not None:
                conn.close()

        def more(than: int, where: str) -> None:
            deadline = time.monotonic() + 30
            while len(acked) <= than + 20:
                assert thread.is_alive() and time.monotonic() < deadline, f"no rows written {where}"
                time.sleep(0.05)

        def ids(url: str) -> set[int]:
            with psycopg.connect(url) as conn:
                return {r[0] for r in conn.execute(f"SELECT id FROM {tag}.rows")}

        thread = threading.Thread(target=write, name="inserts", daemon=True)
        thread.start()
        try:
            for n in (1, 2):
                more(len(acked), f"before failover {n}")
                f.kill_primary()
                time.sleep(0.5)
                f.promote()
                more(len(acked), f"on the promoted standby (failover {n})")
                done = list(acked)  # (before the rows are read: the client goes on inserting)
                held = ids(f.on_standby(primary))  # (the promoted node, just before the failback)
                assert set(done) <= held, f"failover {n}: acknowledged rows missing from the promoted standby"
                f.stack("pg-failback")
                more(len(acked), f"after failback {n}")
                done = list(acked)
                with psycopg.connect(primary, autocommit=True) as conn:  # (its own port alone)
                    assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
                    assert conn.execute("SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                                        (STANDBY,)).fetchall() == [("sync",)], "a synchronous standby again"
                on_primary = ids(primary)
                lost = sorted(held - on_primary)
                assert not lost, f"failback {n} lost {len(lost)} rows, e.g. {lost[:5]}"
                assert set(done) <= on_primary, f"failback {n}: acknowledged rows missing from the primary"
                assert done[-1] in on_primary, "new rows go to the primary"
        finally:
            stop.set()
            thread.join(10)
