"""What every fault test checks after its fault, the same way (issue 29: the PostgreSQL
failover, the cluster's faults): the rows the writer left, and that no worker is down for
good. Recoveries on the topic are workers.assert_recovered_once."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psycopg


def audit_rows(url: str) -> int:
    """Audit rows in the database at `url` now; -1 while it cannot be reached (failing over)."""
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            return conn.execute("SELECT count(*) FROM recovery_audit").fetchone()[0]
    except psycopg.OperationalError:
        return -1


def wait_for_audit_rows(url: str, at_least: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    n = audit_rows(url)
    while n < at_least:
        assert time.monotonic() < deadline, f"{n} audit rows after {timeout}s, expected {at_least}"
        time.sleep(0.2)
        n = audit_rows(url)
    return n


def assert_rows_once(url: str, recovered: set[str], late: set[str]) -> None:
    """Every payment the join had to recover (`recovered`: payment ids) has one row in
    orders, written by recovery, and one audit row, `inserted`; no other row or audit row
    was written (nothing invented, nothing doubled); every late order (`late`: order ids)
    is kept once and reconciled its row."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute("SELECT payment_id, count(*) FROM orders WHERE source = 'recovery' GROUP BY 1").fetchall()
        others = conn.execute("SELECT count(*) FROM orders WHERE source <> 'recovery'").fetchone()[0]
        audit = conn.execute("SELECT payment_id, outcome, count(*) FROM recovery_audit GROUP BY 1, 2").fetchall()
        reconciled = {r[0] for r in conn.execute("SELECT order_id FROM orders WHERE reconciled_at IS NOT NULL")}
        kept = conn.execute("SELECT order_id, count(*) FROM late_orders GROUP BY 1").fetchall()
    written = {pid for pid, _ in rows}
    assert written == recovered, (f"orders: {len(recovered - written)} recoveries lost, "
                                  f"{len(written - recovered)} rows invented")
    assert [r for r in rows if r[1] != 1] == [] and others == 0, "each row once"
    owed = {(pid, "inserted", 1) for pid in recovered}
    off = sorted(set(audit) ^ owed)[:5]
    assert sorted(audit) == sorted(owed), f"audit: one `inserted` row per recovery; off: {off}"
    assert reconciled == late, \
        f"late orders: {len(late - reconciled)} not reconciled, {len(reconciled - late)} invented"
    assert sorted(kept) == sorted((oid, 1) for oid in late), "each late order kept once"


def assert_up(*workers: tuple[str, subprocess.Popen, Path]) -> None:
    """Each (name, process, log) still runs: no worker down for good."""
    for name, proc, log in workers:
        assert proc.poll() is None, f"{name} exited ({proc.returncode}): " + log.read_text()[-3000:]
