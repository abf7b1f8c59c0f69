"""The Kafka Streams peer of `slipguard bench`: the same join as Kafka Streams users write
it (kstreams_peer/: payments leftJoin orders within +-ORDER_TIMEOUT, GRACE after it, each
record decoded as JSON, exactly_once_v2, RocksDB stores with their changelogs, the bench's
commit interval), built with Maven from Maven Central and run with `java` on the same
broker and records as the join. Timed as `drain` is, by its committed input offsets: from
the first commit seen to the last record's, and its CPU from /proc.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafka import config
from streams.settings import Settings

ROOT = Path(__file__).parent / "kstreams_peer"
KAFKA_STREAMS = "4.1.1"  # as pom.xml pins it


def available() -> str | None:
    """None, or why the peer cannot run here (no java or mvn)."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found" if missing else None


def command() -> list[str]:
    """Compile the peer (Maven resolves Kafka Streams once into ~/.m2) and its java command."""
    classpath = ROOT / "target" / "classpath.txt"
    subprocess.run(["mvn", "-q", "-B", "compile", "dependency:build-classpath",
                    f"-Dmdep.outputFile={classpath}"], cwd=ROOT, check=True, stdout=sys.stderr)  # (not the report)
    return ["java", "-Xmx1g", "-cp", f"{ROOT / 'target' / 'classes'}:{classpath.read_text().strip()}", "slipguard.Peer"]


def _committed(c: Consumer, tps: list[TopicPartition]) -> int:
    try:
        return sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=5))
    except Exception:  # noqa: BLE001 (the group coordinator not ready yet: nothing committed)
        return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def drain(s: Settings, total: int, cmd: list[str], timeout: float = 600.0) -> tuple[float, float]:
    """Run the peer over the workload's topics until it has committed every input record:
    events/s and CPU seconds per million events."""
    app = f"{s.join_group}-kstreams-{uuid.uuid4().hex[:6]}"
    out = f"{app}.recovery"
    admin = AdminClient(config.admin(s))
    for f in admin.create_topics([NewTopic(out, s.partitions, 1)]).values():
        f.result(30)
    tps = [TopicPartition(t, p) for t in (s.payments_topic, s.orders_topic) for p in range(s.partitions)]
    c = Consumer(config.consumer(s, app))
    log = ROOT / "target" / f"{app}.log"  # its own log (slf4j-simple writes to stderr): not a pipe that fills
    with open(log, "wb") as out_file:
        proc = subprocess.Popen([*cmd, s.bootstrap_servers, app, s.payments_topic, s.orders_topic, out,
                                 str(s.order_timeout), str(s.grace), str(s.commit_interval)],
                                stdout=out_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        first: tuple[float, int] | None = None
        cpu0 = 0.0
        done = 0
        while done < total:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Kafka Streams peer stopped or stalled at {done:,} of {total:,} "
                                   f"(its log: {log}):\n{log.read_text(errors='replace')[-2000:]}")
            done = _committed(c, tps)
            if first is None and done:
                first, cpu0 = (time.perf_counter(), done), _cpu_seconds(proc.pid)
            time.sleep(0.05)
        assert first is not None
        took = time.perf_counter() - first[0]
        cpu = _cpu_seconds(proc.pid) - cpu0
        return (total - first[1]) / took, cpu / (total - first[1]) * 1e6
    finally:
        c.close()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
