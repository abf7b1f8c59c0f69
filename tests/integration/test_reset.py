"""`slipguard reset` on the real stack: a day of traffic joined and written, then replayed
from its middle: the dry run changes nothing, the reset is refused while a worker runs,
and after it the join re-derives the same recoveries (the same recovery ids) with
PostgreSQL unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import psycopg
from confluent_kafka import Consumer, TopicPartition

from schemas import Recovery
from streams.kafka import config
from streams.tools.loadgen import merged, plan, produce
from tests.integration.conftest import consume_all
from tests.integration.test_recover import writer_settings
from tests.integration.workers import ROOT, assert_recovered_once, env_for, group_timeouts, start, stop, wait_until_done

DAY_MS = 24 * 3600 * 1000


def _reset(s, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams", "reset", *args], env=env_for(s), cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


def _database(s) -> dict[str, list]:
    with psycopg.connect(s.database_url.get_secret_value()) as conn:
        return {
            "orders": conn.execute("SELECT order_id, payment_id, recovery_id, amount, recovered_at FROM orders "
                                   "ORDER BY order_id").fetchall(),
            "audit": conn.execute("SELECT recovery_id, outcome, written_at FROM recovery_audit "
                                  "ORDER BY recovery_id").fetchall(),
            "late": conn.execute("SELECT recovery_id, received_at FROM late_orders ORDER BY recovery_id").fetchall(),
        }


def _committed(s) -> dict[tuple[str, int], int]:
    c = Consumer(config.consumer(s, s.join_group))
    try:
        tps = [TopicPartition(t, p) for t in (s.payments_topic, s.orders_topic) for p in range(s.partitions)]
        return {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=30)}
    finally:
        c.close()


def _wait_rows(s, n: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if len(_database(s)["audit"]) >= n:
            return
        time.sleep(0.5)
    raise AssertionError(f"the writer did not write {n} rows")


def test_a_day_replayed_from_its_middle_rederives_the_same_recoveries_and_leaves_postgresql_unchanged(
        base_settings, tmp_path) -> None:
    s = writer_settings(base_settings)
    start_ms = int(time.time() * 1000) - DAY_MS - 3_600_000  # a day of traffic, which ended an hour ago
    pays, ords, exp = plan(2_000, start_ms=start_ms, spacing_ms=DAY_MS / 2_000, timeout_ms=5_000, seed=61)
    produce(s, merged(pays, ords))
    # The join runs as a static member (an instance id): stopped, it stays a member for the
    # group's session timeout, which reset waits out; the local floor keeps that short.
    group_timeouts(s, session_ms=6_000, heartbeat_ms=1_000)
    writer = start(s, ["recover"], tmp_path / "writer.log")
    join = start(s, ["join"], tmp_path / "join.log")
    try:
        wait_until_done(s, exp.payments + exp.orders)
        assert_recovered_once(s, exp.recovered)
        _wait_rows(s, len(exp.recovered))
        before = _database(s)
        ids_before = {Recovery.decode(m.value()).recovery_id for m in consume_all(s, s.recovery_topic,
                                                                                  len(exp.recovered))}
        middle = datetime.fromtimestamp((start_ms + DAY_MS // 2) / 1000, UTC).isoformat()

        refused = _reset(s, "--to-datetime", middle, "--execute")
        assert refused.returncode == 1 and "active members" in refused.stderr, refused.stderr
        assert stop(join) == 0

        at_end = _committed(s)
        dry = _reset(s, "--to-datetime", middle, "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        planned = json.loads(dry.stdout)
        assert planned["changelog_entries"] > 0 and not planned["executed"]
        assert _committed(s) == at_end, "a dry run changes nothing"
        assert all(m["target"] < m["current"] for m in planned["moves"]), "the inputs go back"

        done = _reset(s, "--to-datetime", middle, "--execute")
        assert done.returncode == 0, done.stderr
        assert "emptied" in done.stdout
        assert _committed(s) == {(m["topic"], m["partition"]): m["target"] for m in planned["moves"]}

        join = start(s, ["join"], tmp_path / "join-after.log")
        wait_until_done(s, exp.payments + exp.orders)
        time.sleep(3)  # the writer's batches of what was derived again
        after_ids = {Recovery.decode(m.value()).recovery_id for m in consume_all(s, s.recovery_topic,
                                                                                len(exp.recovered) + 1, timeout=10)}
        assert after_ids == ids_before, "the same recoveries (the same recovery ids), nothing new"
        assert _database(s) == before, "PostgreSQL unchanged"
    finally:
        assert stop(join) == 0 and stop(writer) == 0
    restored = (tmp_path / "join-after.log").read_text()
    assert "restored partitions" in restored and "0 pending payments, 0 orders, 0 recovered" in restored
