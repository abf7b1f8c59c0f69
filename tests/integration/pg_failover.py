"""A PostgreSQL failover of the local stack, for the tests that need one: a synchronous
standby beside the stack's primary (deploy/local/stack.sh pg-standby-up), the primary
killed (-9) and the standby promoted, the stack put back whatever happened
(pg-failover-reset); and the ways a test holds a COMMIT of the writer's in flight."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.integration.workers import ROOT

STACK = ROOT / "deploy" / "local" / "stack.sh"
STANDBY = "slipguard_standby"  # its application_name (stack.sh)


class Failover:
    """The stack's primary (`primary`: its URL as the settings give it) with a standby on
    `standby_port`."""

    def __init__(self, primary: str, standby_port: int) -> None:
        self.primary, self.standby_port = primary, standby_port
        self.walsender = 0  # stopped by frozen_walsender, until the primary is killed

    def stack(self, command: str) -> float:
        """stack.sh COMMAND (pg-primary-kill, pg-promote, ...); how long it took."""
        started = time.monotonic()
        env = os.environ | {"SLIPGUARD_PG_STANDBY_PORT": str(self.standby_port)}
        done = subprocess.run(["bash", str(STACK), command], env=env, capture_output=True, text=True, timeout=180,
                              check=False)
        assert done.returncode == 0, f"stack.sh {command}: {done.stdout[-1000:]} {done.stderr[-2000:]}"
        return time.monotonic() - started

    def kill_primary(self) -> None:
        self.stack("pg-primary-kill")
        self.walsender = 0  # (killed with it)

    def promote(self) -> None:
        self.stack("pg-promote")

    def fail_over(self) -> tuple[float, float]:
        """The primary killed -9, the standby promoted 1 s later (a real failover takes
        longer to decide): when each happened (time.monotonic())."""
        killed = time.monotonic()
        self.kill_primary()
        time.sleep(1)
        self.promote()
        return killed, time.monotonic()

    def both(self, url: str) -> str:
        """`url` (on the primary) naming the primary, then the standby, asking for the one
        that takes writes."""
        parts = urlsplit(url)
        netloc = parts.netloc.replace(f":{parts.port}", f":{parts.port},{parts.hostname}:{self.standby_port}")
        query = "&".join(q for q in (parts.query, "target_session_attrs=read-write") if q)
        return parts._replace(netloc=netloc, query=query).geturl()

    def on_standby(self, url: str) -> str:
        """`url` (on the primary) on the standby alone."""
        parts = urlsplit(url)
        return parts._replace(netloc=parts.netloc.replace(f":{parts.port}", f":{self.standby_port}")).geturl()

    def frozen_walsender(self) -> object:
        """Stop the primary's WAL sender to the standby (SIGSTOP): what is committed from
        now on is on the primary alone, and each COMMIT waits for the standby (SyncRep).
        Returns the primary's clock just after."""
        with psycopg.connect(self.primary, autocommit=True) as conn:
            row = conn.execute("SELECT pid FROM pg_stat_replication WHERE application_name = %s",
                               (STANDBY,)).fetchone()
            assert row is not None, "the standby streams from the primary"
            os.kill(row[0], signal.SIGSTOP)
            self.walsender = row[0]
            return conn.execute("SELECT clock_timestamp()").fetchone()[0]

    def wait_for_a_commit_the_standby_lacks(self, since: object, pid: int | None = None,
                                            timeout: float = 15) -> None:
        """A COMMIT sent after the WAL sender stopped (by the backend `pid`, else any),
        waiting for the standby: its commit record is on the primary's disk only. (A
        waiting commit is not yet visible to other sessions, so it cannot be counted.)"""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.primary, autocommit=True) as conn:
            while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep' "
                                   "AND query = 'COMMIT' AND query_start > %s AND pid = coalesce(%s, pid)",
                                   (since, pid)).fetchone()[0]:
                assert time.monotonic() < deadline, "no COMMIT waited for the standby"
                time.sleep(0.05)


def rows_at(url: str) -> int:
    """Rows recovered into orders at `url` now; -1 while it cannot be reached."""
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            return conn.execute("SELECT count(*) FROM orders WHERE source = 'recovery'").fetchone()[0]
    except psycopg.OperationalError:
        return -1


@contextlib.contextmanager
def failover(primary: str) -> Iterator[Failover]:
    """A synchronous standby of the stack's PostgreSQL, whose URL `primary` must be;
    afterwards the stack as `up` left it."""
    port = int(os.environ.get("SLIPGUARD_PG_PORT", "25432"))
    parts = urlsplit(primary)
    if (parts.hostname, parts.port) != ("127.0.0.1", port):
        pytest.fail(f"a failover is of the local stack's PostgreSQL (127.0.0.1:{port}), not {parts.hostname}:"
                    f"{parts.port}: SLIPGUARD_DATABASE_URL must be the stack's")
    f = Failover(primary, int(os.environ.get("SLIPGUARD_PG_STANDBY_PORT", str(port + 1))))
    f.stack("pg-standby-up")
    try:
        yield f
    finally:
        if f.walsender:
            with contextlib.suppress(ProcessLookupError):
                os.kill(f.walsender, signal.SIGCONT)
        f.stack("pg-failover-reset")
