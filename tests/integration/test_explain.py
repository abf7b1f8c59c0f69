"""`slipguard explain ORDER_ID` on the real stack: after the join and the writer have run,
a recovered order, a late one and a matched one each get the timeline of what is durable,
from the one partition their id hashes to, as text and as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psycopg

from streams.kafka.partition import partition_for
from tests.integration.test_join import _historical
from tests.integration.test_recover import writer_settings
from tests.integration.workers import ROOT, assert_recovered_once, env_for, start, stop, wait_until_done


def _explain(s, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams", "explain", *args], env=env_for(s), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_explain_tells_the_story_of_a_recovered_a_late_and_a_matched_order(base_settings, tmp_path) -> None:
    s = writer_settings(base_settings)
    exp = _historical(s, 600, seed=91)
    join, writer = start(s, ["join"], tmp_path / "join.log"), start(s, ["recover"], tmp_path / "writer.log")
    try:
        wait_until_done(s, exp.payments + exp.orders)
        assert_recovered_once(s, exp.recovered)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with psycopg.connect(s.database_url.get_secret_value()) as conn:
                if conn.execute("SELECT count(*) FROM recovery_audit").fetchone()[0] >= len(exp.recovered):
                    break
            time.sleep(0.5)
    finally:
        assert stop(join) == 0 and stop(writer) == 0

    recovered_payment = sorted(exp.recovered)[0]
    recovered = "o" + recovered_payment[1:]
    text = _explain(s, recovered)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert out.startswith(f"order {recovered} (partition {partition_for(recovered.encode(), s.partitions)})")
    assert f"payment {recovered_payment} succeeded" in out and "recovered: no order by the deadline" in out
    assert "written: inserted" in out and "PostgreSQL: a recovered order" in out
    assert "join state now: payment" in out and "recovered at" in out
    lines = [line for line in out.splitlines() if line.startswith("  20")]
    # Oldest first, by timestamp only: a recovery and its late order can be written in the
    # same millisecond (one transaction), and then the story's order (recovery, then late
    # order) stands, which sorting whole lines would reverse ("orders.late" < "orders.recovery").
    stamps = [line.split()[0] for line in lines]
    assert stamps == sorted(stamps), "a timeline, oldest first"

    late = sorted(exp.late)[0]
    data = json.loads(_explain(s, late, "--json").stdout)
    assert any(e["what"].startswith("late order") for e in data["events"])
    assert data["partition"] == partition_for(late.encode(), s.partitions)

    matched = next(f"o91-{i}" for i in range(600) if f"p91-{i}" not in exp.recovered and f"o91-{i}" not in exp.late)
    data = json.loads(_explain(s, matched, "--json", "--no-database").stdout)
    whats = [e["what"] for e in data["events"]]
    assert any(w.startswith("payment p91-") for w in whats) and any(w.startswith("order arrived") for w in whats)
    assert not any(w.startswith("recovered") for w in whats) and data["database"] == "not read"
    unknown = json.loads(_explain(s, "no-such-order", "--json").stdout)
    assert unknown["events"] == [] and unknown["database"] == "no row in orders"
