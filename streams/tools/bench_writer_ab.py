"""This tree's recovery writer against another commit's, on the same broker, the same
PostgreSQL and the same pre-produced recoveries, interleaved run by run: the sustained
run of `slipguard bench-writer --rows N` with only the writer's code differing.

    python -m streams.tools.bench_writer_ab --against REF [--rows 300000] [--runs 3]

Each run is a fresh consumer group reading the recoveries from the start into a fresh
schema, migrated by that tree's own migrations; each tree's `slipguard recover` in a
process of its own (PYTHONPATH=tree; a tree is `git archive REF streams schemas`, or this
tree's copied at the start). Both sides are timed by the same poller (bench._AuditRows):
from the first audit row to the last. Printed per run: rows/s, rows/s per 50,000 rows,
the writer's CPU per row, its resident memory at the end, the load average; then the
medians. The writer needs no native module: none is built.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer

from streams.kafka import config
from streams.kafka.topics import create_topics
from streams.settings import Settings, load_settings
from streams.tools.bench import _AuditRows, _bench_settings, _recoveries

ROOT = Path(__file__).resolve().parents[2]
SEGMENT = 50_000
_MIGRATE = "import sys\nfrom streams.db import migrate\nmigrate(sys.argv[1])\n"


def tree_of(ref: str | None, into: Path) -> Path:
    """`streams/` and `schemas/` at `ref`, or this tree's as they are now (None)."""
    into.mkdir(parents=True)
    if ref is None:
        for part in ("streams", "schemas"):
            shutil.copytree(ROOT / part, into / part, ignore=shutil.ignore_patterns("__pycache__"))
        return into
    out = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "streams", "schemas"], capture_output=True)
    if out.returncode != 0:
        raise SystemExit(f"bench_writer_ab: git archive {ref}: {out.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=out.stdout, check=True)
    return into


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) // 1024


def write_in(tree: Path, b: Settings, rows: int) -> dict[str, object]:
    """One sustained run: `tree`'s writer writes the `rows` recoveries into a fresh schema."""
    import psycopg

    base = b.database_url.get_secret_value()
    schema = f"wbab_{uuid.uuid4().hex[:8]}"  # our own name: letters, digits, underscores
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    env = os.environ | b.to_env() | {
        "SLIPGUARD_DATABASE_URL": url, "SLIPGUARD_RECOVER_GROUP": f"{b.recover_group}-{schema}",
        "SLIPGUARD_METRICS_PORT": "0", "SLIPGUARD_LOG_LEVEL": "WARNING", "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-c", _MIGRATE, url], cwd=tree, env=env, check=True)
    proc = subprocess.Popen([sys.executable, "-m", "streams", "recover"], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counter = _AuditRows(url)
    try:
        while counter.count() == 0:
            if proc.poll() is not None:
                raise SystemExit(f"bench_writer_ab: the writer of {tree} exited with {proc.returncode}")
            time.sleep(0.05)
        started, cpu0, load0 = time.perf_counter(), _cpu_s(proc.pid), os.getloadavg()[0]
        marks: list[tuple[int, float]] = []
        while (n := counter.count()) < rows:
            if n >= SEGMENT * (len(marks) + 1):
                marks.append((n, time.perf_counter() - started))
            time.sleep(0.05)
        took = time.perf_counter() - started
        cpu, rss, load1 = _cpu_s(proc.pid) - cpu0, _rss_mb(proc.pid), os.getloadavg()[0]
        counter.check()
    finally:
        proc.terminate()
        proc.wait(60)
        counter.close()
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    segments, last = [], (0, 0.0)
    for n, t in [*marks, (rows, took)]:
        segments.append(round((n - last[0]) / (t - last[1])))
        last = (n, t)
    return {"rows_per_s": round(rows / took), "per_50k": segments, "cpu_us_per_row": round(cpu / rows * 1e6, 1),
            "rss_mb": rss, "load": [round(load0, 2), round(load1, 2)]}


def run(s: Settings, against: str, rows: int, runs: int) -> str:
    b = _bench_settings(s, s.partitions)
    create_topics(b)
    producer = Producer(config.producer(b))
    for key, value in _recoveries(rows, 0):
        producer.produce(b.recovery_topic, value, key)
        producer.poll(0)
    producer.flush(60)
    results: dict[str, list[dict[str, object]]] = {against: [], "this tree": []}
    with tempfile.TemporaryDirectory(prefix="slipguard-writer-ab-") as tmp:
        trees = {against: tree_of(against, Path(tmp) / "ref"), "this tree": tree_of(None, Path(tmp) / "here")}
        names = list(trees)
        for i in range(runs):
            for name in (names if i % 2 == 0 else names[::-1]):
                got = write_in(trees[name], b, rows)
                results[name].append(got)
                print(f"bench_writer_ab run {i + 1} {name}: {json.dumps(got)}", file=sys.stderr, flush=True)
    lines = [f"bench_writer_ab: {rows:,} recoveries, {runs} runs each, interleaved ({against} first)"]
    for name in names:
        rates = [int(str(r["rows_per_s"])) for r in results[name]]
        cpus = [float(str(r["cpu_us_per_row"])) for r in results[name]]
        lines.append(f"  {name:>12}: median {statistics.median(rates):,.0f} rows/s, writer CPU "
                     f"{statistics.median(cpus):.1f} us per row (runs: {', '.join(f'{x:,}' for x in rates)})")
    ref = statistics.median(int(str(r["rows_per_s"])) for r in results[against])
    here = statistics.median(int(str(r["rows_per_s"])) for r in results["this tree"])
    lines.append(f"  this tree / {against}: {here / ref:.3f} (medians of rows/s)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.tools.bench_writer_ab",
                                     description="this tree's recovery writer against another commit's, interleaved")
    parser.add_argument("--against", required=True, help="the commit to compare this tree's writer with")
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(run(load_settings(), args.against, args.rows, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
