"""`slipguard demo`: the main job end to end on the local stack, with a checked summary.

Creates topics for this run, migrates the database, starts one join worker, one
recovery writer and the lag exporter (real processes), produces live traffic with a
visible share of missing orders, late orders, anomalies and a few undecodable records,
shows progress, and ends with a summary checked against what it produced. The stack
stays up; the workers stop.

What a user needs to look around afterwards is left in .stack/demo/: the run's settings
as an env file (`slipguard lag --env-file .stack/demo/<run>.env`), the commands printed
at the end with the run's names filled in, and the metrics scraped every 2 s
(<run>-metrics.csv: lag, pending payments, recoveries; `docs/generate.py` plots one).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, TopicPartition

from streams.db import migrate, one
from streams.kafka import config
from streams.kafka.topics import create_topics
from streams.settings import Settings
from streams.tools.loadgen import Expected, Shares, merged, plan, produce

ROOT = Path(__file__).resolve().parents[2]  # the checkout (this is streams/tools/demo.py)
LOGS = ROOT / ".stack" / "demo"
SHARES = Shares(missing=0.03, late=0.015, duplicates=0.02, second_payment=0.005, mismatch=0.01, failed=0.02,
                jitter_ms=1_000)


_AS_JSON = False


def _say(*parts: object) -> None:
    """The demo's running account: stdout, or stderr when the summary is JSON."""
    print(*parts, file=sys.stderr if _AS_JSON else sys.stdout, flush=True)


def log_file(run_id: str, worker: str) -> Path:
    """Where a demo worker's output goes."""
    return LOGS / f"{run_id}-{worker}.log"


def _start(s: Settings, command: str, port: int, run_id: str, *args: str) -> subprocess.Popen:
    """`slipguard <command>` as a process of its own, its output in its log file."""
    with open(log_file(run_id, command), "wb") as out:  # the process keeps its own copy
        return subprocess.Popen([sys.executable, "-m", "streams", command, *args], env=_env(s, port), stdout=out,
                                stderr=subprocess.STDOUT)


# What a command needs to find this run's records: its names, its rules, where Kafka is.
ENV_FILE_SETTINGS = ("bootstrap_servers", "payments_topic", "orders_topic", "recovery_topic", "late_topic",
                     "anomalies_topic", "dlq_topic", "join_group", "recover_group", "order_timeout", "grace",
                     "late_horizon")


def write_env_file(s: Settings, run_id: str) -> Path:
    """The run's settings as SLIPGUARD_* lines, for `--env-file` (no secrets: the database
    URL and any key stay where the demo found them)."""
    env = s.to_env()
    path = LOGS / f"{run_id}.env"
    lines = [f"# slipguard demo {run_id}: use with --env-file {_shown(path)}"]
    lines += [f"SLIPGUARD_{name.upper()}={env[f'SLIPGUARD_{name.upper()}']}" for name in ENV_FILE_SETTINGS]
    path.write_text("\n".join(lines) + "\n")
    return path


def _shown(path: Path) -> str:
    """A path as a user types it from where they are: relative when it is below."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _exited(procs: dict[str, subprocess.Popen], run_id: str) -> str | None:
    """What to say of the first worker that exited, if one did."""
    for name, proc in procs.items():
        if proc.poll() is not None:
            return f"the {name} worker exited with {proc.returncode}; see {log_file(run_id, name)}"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(s: Settings, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPGUARD_")} | s.to_env()
    env["SLIPGUARD_METRICS_PORT"] = str(port)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _scrape(port: int, name: str, where: str = "", how: str = "sum") -> float:
    """A metric's samples on a worker's /metrics added up (or their max), those whose
    labels contain `where` only; NaN when the worker does not answer."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return float("nan")
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith((name + " ", name + "{")) and where in line]
    if how == "max":
        return max(values, default=0.0)
    return sum(values)


def _committed_records(s: Settings, topic: str) -> int:
    """Records a read_committed reader sees (transaction markers take offsets too)."""
    c = Consumer(config.consumer(s, f"{s.join_group}-demo-read", **{"enable.partition.eof": True}))
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    n, ends = 0, 0
    deadline = time.monotonic() + 30
    while ends < len(parts) and time.monotonic() < deadline:
        for m in c.consume(10_000, timeout=0.5):
            if m.error():
                ends += 1
            else:
                n += 1
    c.close()
    return n


def run(s: Settings, *, rate: float, seconds: float, as_json: bool = False) -> int:
    global _AS_JSON
    _AS_JSON = as_json  # the running account to stderr, the summary as JSON
    run_id = time.strftime("%H%M%S")
    demo = s.with_prefix(f"demo.{run_id}", join_group=f"slipguard-demo-{run_id}-join",
                         recover_group=f"slipguard-demo-{run_id}-recover", instance_id=f"demo-{run_id}",
                         order_timeout="5s", grace="1s", late_horizon="10m", commit_interval="100ms")
    _say(f"demo {run_id}: ORDER_TIMEOUT=5s, GRACE=1s (shortened so the demo takes a minute; the default is 60s/5s)")
    LOGS.mkdir(parents=True, exist_ok=True)
    env_file = write_env_file(demo, run_id)
    for line in create_topics(demo):
        _say("  topics:", line)
    applied = migrate(demo.database_url.get_secret_value())
    _say("  database:", ", ".join(applied) if applied else "schema up to date")

    ports = Ports(_free_port(), _free_port(), _free_port())
    procs = {"join": _start(demo, "join", ports.join, run_id), "recover": _start(demo, "recover", ports.writer, run_id),
             "lag": _start(demo, "lag", ports.lag, run_id, "--serve", "--interval", "1")}
    _say(f"  started join (metrics :{ports.join}), recovery writer (:{ports.writer}) and lag exporter "
         f"(:{ports.lag}); logs in {_shown(LOGS)}")
    exp: list[Expected] = []
    try:
        code = _drive(demo, run_id, rate, seconds, ports, procs, exp)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            stopped = proc.wait(60)
            _say(f"  {name} worker stopped (exit {stopped})")
    _say("The local stack (Kafka, PostgreSQL) is still running: `make down` stops it.")
    if exp:
        _look_around(env_file, exp[0], run_id)
    return code


def _look_around(env_file: Path, exp: Expected, run_id: str) -> None:
    """The commands that show what this run did, its names filled in."""
    slipguard = _shown(Path(sys.executable).parent / "slipguard")
    flag = f"--env-file {_shown(env_file)}"
    late = sorted(exp.late)
    _say("\nLook around (this run's topics and groups are in the env file):")
    if late:
        _say(f"  {slipguard} explain {late[0]} {flag}    # an order recovered, then reconciled with its late order")
    _say(f"  {slipguard} lag {flag}")
    _say(f"  {slipguard} dlq list {flag}")
    _say(f"  logs: {_shown(log_file(run_id, '*'))}; metrics every 2 s: {_shown(series_file(run_id))}")


@dataclass(frozen=True)
class Ports:
    join: int
    writer: int
    lag: int


def series_file(run_id: str) -> Path:
    """The run's metrics over time, one row per progress line."""
    return LOGS / f"{run_id}-metrics.csv"


SERIES = ("seconds", "matched", "recovered", "late", "pending_payments", "rows_written", "reconciled",
          "join_lag_messages", "join_lag_seconds", "writer_lag_messages")


def _sample(demo: Settings, ports: Ports, elapsed: float, written: int, reconciled: int) -> dict[str, float]:
    """One row of the series: what the join, the writer's rows and the lag exporter say now."""
    join_group, writer_group = f'group="{demo.join_group}"', f'group="{demo.recover_group}"'
    return {"seconds": round(elapsed, 1),
            "matched": _scrape(ports.join, "slipguard_join_matched_total"),
            "recovered": _scrape(ports.join, "slipguard_join_recovered_total"),
            "late": _scrape(ports.join, "slipguard_join_late_orders_total"),
            "pending_payments": _scrape(ports.join, "slipguard_join_pending_payments"),
            "rows_written": written, "reconciled": reconciled,
            "join_lag_messages": _scrape(ports.lag, "slipguard_consumer_lag_messages", join_group),
            "join_lag_seconds": _scrape(ports.lag, "slipguard_consumer_lag_seconds", join_group, how="max"),
            "writer_lag_messages": _scrape(ports.lag, "slipguard_consumer_lag_messages", writer_group)}


def _drive(demo: Settings, run_id: str, rate: float, seconds: float, ports: Ports,
           procs: dict[str, subprocess.Popen], exp_out: list[Expected]) -> int:
    time.sleep(4)  # both workers join their groups
    count = int(rate * seconds / 2)
    pays, ords, exp = plan(count, start_ms=int(time.time() * 1000) + 500, spacing_ms=1000 * seconds / count,
                           timeout_ms=demo.order_timeout, shares=SHARES, seed=int(run_id), prefix=f"d{run_id}-")
    exp_out.append(exp)
    poison = [(0, b"bad-1", b"{not json", int(time.time() * 1000)),
              (1, b"bad-2", b'{"order_id": "bad-2", "amount": 10.5}', int(time.time() * 1000))]
    _say(f"producing {len(pays):,} payments and {len(ords):,} orders over {seconds:.0f}s at ~{rate:.0f} events/s, "
          f"plus 2 undecodable records")
    producer = threading.Thread(target=produce, args=(demo, merged(pays, ords)), kwargs={"realtime": True}, daemon=True)
    producer.start()
    produce(demo, poison)
    db_url = demo.database_url.get_secret_value()
    started = time.monotonic()
    like = f"d{run_id}-%"
    written = reconciled = 0
    with series_file(run_id).open("w", newline="") as series:
        rows = csv.DictWriter(series, fieldnames=SERIES)
        rows.writeheader()
        while True:
            time.sleep(2)
            exited = _exited(procs, run_id)
            if exited is not None:
                _say(exited)
                return 1
            with psycopg.connect(db_url) as conn:
                written, reconciled = one(conn.execute(
                    "SELECT count(*), count(reconciled_at) FROM orders WHERE source = 'recovery' AND order_id LIKE %s",
                    (like,)))
            now = _sample(demo, ports, time.monotonic() - started, written, reconciled)
            rows.writerow(now)
            series.flush()
            _say(f"  t+{now['seconds']:4.0f}s  matched {_int(now['matched']):>6}  recovered {_int(now['recovered']):>5}"
                 f"  late {_int(now['late']):>4}  pending {_int(now['pending_payments']):>5}"
                 f"  rows written {written:5,}  reconciled {reconciled:4,}")
            done = not producer.is_alive() and written >= len(exp.recovered) and reconciled >= len(exp.late)
            if done or time.monotonic() - started > seconds + 90:
                break
    time.sleep(2)
    return _summary(demo, exp, like, ports.join)


def _int(value: float) -> str:
    return "?" if value != value else f"{int(value):,}"  # NaN: the worker did not answer


def _summary(demo: Settings, exp: Expected, like: str, jport: int) -> int:
    with psycopg.connect(demo.database_url.get_secret_value()) as conn:
        outcomes: dict[str, int] = dict(conn.execute(
            "SELECT outcome, count(*) FROM recovery_audit WHERE order_id LIKE %s GROUP BY 1", (like,)).fetchall())
        reconciled = one(conn.execute(
            "SELECT count(*) FROM orders WHERE order_id LIKE %s AND reconciled_at IS NOT NULL", (like,)))[0]
    rows = [
        # Each input topic also holds one undecodable record of the demo's.
        ("payments in the topic", _committed_records(demo, demo.payments_topic) - 1, exp.payments),
        ("orders in the topic", _committed_records(demo, demo.orders_topic) - 1, exp.orders),
        ("matched", int(_scrape(jport, "slipguard_join_matched_total")), exp.matched),
        ("recovered (orders.recovery)", _committed_records(demo, demo.recovery_topic), len(exp.recovered)),
        ("rows written: inserted", outcomes.get("inserted", 0), len(exp.recovered)),
        ("rows written: already_present", outcomes.get("already_present", 0), 0),
        ("rows written: rejected", outcomes.get("rejected", 0), 0),
        ("late orders reconciled", reconciled, len(exp.late)),
        ("anomalies", _committed_records(demo, demo.anomalies_topic), sum(exp.anomalies.values())),
        ("DLQ", _committed_records(demo, demo.dlq_topic), 2),
    ]
    bad = sum(seen != want for _, seen, want in rows)
    if _AS_JSON:
        print(json.dumps({"figures": [{"figure": n, "seen": seen, "expected": want} for n, seen, want in rows],
                          "all_match": not bad}, indent=2))
        return 0 if not bad else 1
    print("\nsummary                          seen   expected")
    for name, seen, want in rows:
        print(f"  {name:30} {seen:6,} {want:10,}  {'ok' if seen == want else 'DIFFERS'}")
    print("\nAll figures match what was produced." if not bad else f"\n{bad} figure(s) differ from what was produced.")
    return 0 if not bad else 1

