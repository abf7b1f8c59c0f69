"""The writer's commits against a primary with a synchronous standby, then a failover
(tests/integration/pg_failover.py). The failover under live traffic, with the join, the
writer and the lag exporter as processes, is a fault test of the cluster's
(tests/cluster/test_faults.py)."""

from __future__ import annotations

import asyncio

import psycopg

from streams.recover.writer import Record, Writer
from tests.integration.pg_failover import failover
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
