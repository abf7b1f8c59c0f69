"""A real PostgreSQL failover under live traffic (issue 29): the stack's primary killed -9
with a commit of the writer's in flight, its synchronous standby promoted, the writer
going on against the new primary through a multi-host URL (target_session_attrs=read-write).

The standby is made by `deploy/local/stack.sh pg-standby-up` (pg_basebackup, synchronous)
and the stack put back by `pg-failover-reset` whatever happens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from urllib.parse import urlsplit

import psycopg
import pytest

from streams.db import migrate
from streams.kafka.topics import create_topics
from streams.settings import Settings
from streams.tools.loadgen import Shares
from tests.integration.conftest import isolated
from tests.integration.invariants import assert_rows_once, assert_up, audit_rows, wait_for_audit_rows
from tests.integration.test_broker_restart import _exported_total, _Readiness, _readiness
from tests.integration.test_join import _LiveTraffic
from tests.integration.test_lag import _free_port
from tests.integration.workers import ROOT, assert_recovered_once, start, stop, wait_until_done

STACK = ROOT / "deploy" / "local" / "stack.sh"
STANDBY = "slipguard_standby"  # its application_name (stack.sh)


def _stack(command: str, standby_port: int) -> None:
    env = os.environ | {"SLIPGUARD_PG_STANDBY_PORT": str(standby_port)}
    done = subprocess.run(["bash", str(STACK), command], env=env, capture_output=True, text=True, timeout=180,
                          check=False)
    assert done.returncode == 0, f"stack.sh {command}: {done.stdout[-1000:]} {done.stderr[-2000:]}"


@pytest.fixture
def failover(base_settings):
    """The stack's primary with a synchronous standby beside it: (primary URL, standby
    port); afterwards the stack as `up` left it (stack.sh pg-failover-reset)."""
    url = base_settings.database_url.get_secret_value()
    port = int(os.environ.get("SLIPGUARD_PG_PORT", "25432"))
    if url != f"postgresql://slipguard:slipguard@127.0.0.1:{port}/slipguard":
        pytest.fail("this test fails the local stack's PostgreSQL over: SLIPGUARD_DATABASE_URL must be the stack's")
    standby_port = int(os.environ.get("SLIPGUARD_PG_STANDBY_PORT", str(port + 1)))
    _stack("pg-standby-up", standby_port)
    try:
        yield url, standby_port
    finally:
        _stack("pg-failover-reset", standby_port)


def _at(url: str, port: int) -> str:
    """The same database on another port of the same host."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.replace(f":{parts.port}", f":{port}")).geturl()


def _in_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def _on_both(base_settings, primary_url: str, standby_port: int) -> tuple[Settings, str, str]:
    """Isolated settings whose database URL names the primary and the standby
    (target_session_attrs=read-write) in a schema of their own, migrated; and that schema
    on the primary alone and on the standby alone."""
    schema = f"t{int(time.time() * 1000) % 10**10}"
    with psycopg.connect(primary_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    port = urlsplit(primary_url).port
    both = primary_url.replace(f":{port}/", f":{port},127.0.0.1:{standby_port}/")
    s = isolated(base_settings, order_timeout="5s", grace="1s", commit_interval="200ms",
                 database_url=_in_schema(f"{both}?target_session_attrs=read-write", schema))
    migrate(s.database_url.get_secret_value())
    return s, _in_schema(primary_url, schema), _in_schema(_at(primary_url, standby_port), schema)


def _frozen_walsender(primary: str) -> tuple[int, object]:
    """Stop the primary's WAL sender to the standby (SIGSTOP): what is committed from now on
    is on the primary alone, and each COMMIT waits for the standby (SyncRep). Returns its
    pid and the primary's clock just after."""
    with psycopg.connect(primary, autocommit=True) as conn:
        row = conn.execute("SELECT pid FROM pg_stat_replication WHERE application_name = %s", (STANDBY,)).fetchone()
        assert row is not None, "the standby streams from the primary"
        os.kill(row[0], signal.SIGSTOP)
        return row[0], conn.execute("SELECT clock_timestamp()").fetchone()[0]


def _wait_for_a_commit_the_standby_lacks(primary: str, since: object, pid: int | None = None,
                                         timeout: float = 15) -> None:
    """A COMMIT sent after the WAL sender stopped (by the backend `pid`, else any), waiting
    for the standby: its commit record is on the primary's disk only (a waiting commit is
    not yet visible to others, so it cannot be counted)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(primary, autocommit=True) as conn:
        while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep' "
                               "AND query = 'COMMIT' AND query_start > %s AND pid = coalesce(%s, pid)",
                               (since, pid)).fetchone()[0]:
            assert time.monotonic() < deadline, "no COMMIT of the writer's waited for the standby"
            time.sleep(0.05)


def test_primary_killed_and_standby_promoted_under_live_traffic_every_row_once(base_settings, failover,
                                                                              tmp_path) -> None:
    """Join, writer and lag exporter run as processes; recoveries flow to the writer. The
    primary's WAL sender is frozen, so the writer's next COMMIT is on the primary only and
    waits for the standby: that batch is lost with the primary unless the writer writes it
    again. The primary is killed -9 then (the writer cannot know whether its COMMIT took),
    the standby promoted 1 s later. Checked: every recovery once on the topic, its row and
    audit row exactly once in the new primary, every late order reconciled, the writer not
    ready during the outage and ready after, no worker down. The writer's stall is printed."""
    primary_url, standby_port = failover
    s, primary, standby = _on_both(base_settings, primary_url, standby_port)
    create_topics(s)

    ports = {name: _free_port() for name in ("join", "writer", "lag")}
    logs = {name: tmp_path / f"{name}.log" for name in ports}
    procs = {"join": start(s, ["join"], logs["join"], metrics_port=ports["join"]),
             "writer": start(s, ["recover"], logs["writer"], metrics_port=ports["writer"]),
             "lag": start(s, ["lag", "--serve", "--interval", "1"], logs["lag"], metrics_port=ports["lag"])}
    workers = [(name, procs[name], logs[name]) for name in procs]
    walsender = 0
    try:
        for name in ("join", "writer"):
            deadline = time.monotonic() + 60
            while _readiness(ports[name]) != 200:
                assert_up(*workers)
                assert time.monotonic() < deadline, f"{name} not ready: " + logs[name].read_text()[-2000:]
                time.sleep(0.2)
        traffic = _LiveTraffic(s, 6_000, seed=29, seconds=12, shares=Shares(missing=0.1))
        wait_for_audit_rows(primary, 50, timeout=60)  # recoveries flow to the writer
        readiness = _Readiness(ports["writer"])

        walsender, frozen_at = _frozen_walsender(primary_url)
        _wait_for_a_commit_the_standby_lacks(primary_url, frozen_at)
        waiting = time.monotonic()
        time.sleep(0.5)  # a COMMIT waits that long for a slow standby before the primary dies
        killed, mid_stream = time.monotonic(), traffic.running()
        _stack("pg-primary-kill", standby_port)
        walsender = 0  # killed with it
        time.sleep(1.0)  # the failover's detection (a real one takes longer: see the README)
        promoted = time.monotonic()
        _stack("pg-promote", standby_port)
        at_promotion = audit_rows(standby)
        while audit_rows(standby) <= at_promotion:  # the writer's first batch on the new primary
            assert time.monotonic() - promoted < 60, "the writer wrote nothing on the new primary: " + \
                logs["writer"].read_text()[-3000:]
            time.sleep(0.05)
        resumed = time.monotonic()
        assert mid_stream, "the primary was killed under live traffic"

        traffic.join()
        wait_until_done(s, traffic.total, timeout=120)
        assert_recovered_once(s, traffic.exp.recovered, timeout=60)
        wait_for_audit_rows(standby, len(traffic.exp.recovered), timeout=60)
        deadline = time.monotonic() + 30
        while _readiness(ports["writer"]) != 200:
            assert time.monotonic() < deadline, "the writer is ready again after the failover"
            time.sleep(0.2)
        readiness.stop()
        time.sleep(1)  # anything still on its way would show as a second row now
        assert_rows_once(standby, traffic.exp.recovered, traffic.exp.late)
        assert_up(*workers)
        assert 503 in readiness.seen and readiness.seen[-1] == 200, \
            f"the writer's /readyz: not ready during the outage, ready after ({readiness.seen})"
        assert _readiness(ports["join"]) == 200
        assert _exported_total(ports["lag"], s.recover_group) is not None, "the exporter serves the writer's lag"
        log = logs["writer"].read_text()
        assert "PostgreSQL unavailable" in log and "nothing acknowledged" in log
        print(f"\nPostgreSQL failover: the writer wrote on the new primary {resumed - killed:.1f} s after the kill "
              f"({resumed - promoted:.1f} s after the promotion; stalled {resumed - waiting:.1f} s in all, its COMMIT "
              f"waiting for the standby from {killed - waiting:.1f} s before the kill); "
              f"{len(traffic.exp.recovered)} recoveries, each row once")
    finally:
        if walsender:
            os.kill(walsender, signal.SIGCONT)
        for name, proc, log in workers:
            assert stop(proc) == 0, f"{name}: " + log.read_text()[-3000:]




def _backend_of(writer) -> int:
    return writer.conn.info.backend_pid


def test_a_commit_the_synchronous_standby_did_not_confirm_is_not_acknowledged(base_settings, failover) -> None:
    """Two writers, each with a batch whose COMMIT waits for the synchronous standby (its
    WAL sender stopped). One wait is cancelled (pg_cancel_backend, as an operator clears a
    stuck session): PostgreSQL reports the COMMIT done, with a WARNING, its rows on the
    primary alone. The other writer's session is terminated (pg_terminate_backend): the
    COMMIT is done locally, the writer is told nothing, retries, and finds its rows
    present, so its retry writes nothing and waits for no standby. Neither batch may be
    acknowledged on that. The primary is then killed and the standby promoted: every
    record acknowledged must have its rows there, once."""
    import asyncio

    from streams.recover.writer import Record, Writer
    from tests.integration.test_recover import _recovery

    primary_url, standby_port = failover
    s, _, standby = _on_both(base_settings, primary_url, standby_port)
    acked: dict[str, list[int]] = {"cancelled": [], "terminated": []}
    walsender = 0

    async def send_dead_letter(*_: object) -> None:
        raise AssertionError("no record of these is a dead letter")

    def acker(name: str):
        async def ack(token: int) -> None:
            acked[name].append(token)
        return ack

    async def run() -> dict[str, list[int]]:
        nonlocal walsender
        writers = {name: Writer(s, send_dead_letter) for name in acked}
        for n, (name, writer) in enumerate(writers.items()):
            await writer.connection()
            for i in range(5 * n, 5 * n + 5):
                await writer.add(Record(s.recovery_topic, n, i, None, [], b"k", _recovery(i).encode(), token=i),
                                 acker(name))
        walsender, frozen_at = _frozen_walsender(primary_url)
        flushing = [asyncio.ensure_future(writer.flush(acker(name))) for name, writer in writers.items()]
        with psycopg.connect(primary_url, autocommit=True) as conn:
            for name, writer in writers.items():
                pid = _backend_of(writer)
                await asyncio.to_thread(_wait_for_a_commit_the_standby_lacks, primary_url, frozen_at, pid)
                kill = "pg_cancel_backend" if name == "cancelled" else "pg_terminate_backend"
                assert conn.execute(f"SELECT {kill}(%s)", (pid,)).fetchone() == (True,)
        await asyncio.sleep(2)  # the cancelled COMMIT has returned; the terminated writer has retried
        before_the_kill = {name: list(tokens) for name, tokens in acked.items()}
        await asyncio.to_thread(_stack, "pg-primary-kill", standby_port)
        walsender = 0
        await asyncio.to_thread(_stack, "pg-promote", standby_port)
        await asyncio.wait_for(asyncio.gather(*flushing), 60)
        for writer in writers.values():
            if writer.conn is not None:
                await writer.conn.close()
        return before_the_kill

    try:
        before_the_kill = asyncio.run(run())
    finally:
        if walsender:
            os.kill(walsender, signal.SIGCONT)
    assert_rows_once(standby, {f"pay-{i}" for i in range(10)}, set())
    assert before_the_kill == {"cancelled": [], "terminated": []}, \
        "acknowledged while the synchronous standby had not confirmed the commit"
    assert acked == {"cancelled": [0, 1, 2, 3, 4], "terminated": [5, 6, 7, 8, 9]}
