"""`slipguard bench-failover`: how long partitions stop when a join worker goes away.

Real worker processes (`slipguard join`) under live traffic on the local broker. For each
case, the clock starts when a worker is killed -9 (or sent SIGTERM) and stops when the
group's committed offsets have moved past where they stood on every partition, that is,
when every partition processes again:

* kill -9, restarted at once with the same SLIPGUARD_INSTANCE_ID (a StatefulSet pod):
  its init_transactions fences the dead one's transaction at once;
* kill -9 of one of two workers with their own ids (the default): the survivor waits
  for the session timeout, then for the broker to abort the dead transaction;
* SIGTERM of one of two workers: a clean leave that commits and hands over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from streams.kafka.lag import LagReader
from streams.kafka.topics import create_topics
from streams.loadgen import merged, plan, produce
from streams.settings import Settings


@dataclass
class FailoverFigures:
    restart_same_id_s: float
    kill_one_of_two_s: float
    clean_leave_one_of_two_s: float


def _start(s: Settings, instance_id: str | None, log: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPGUARD_")} | s.to_env()
    env.pop("SLIPGUARD_INSTANCE_ID", None)
    if instance_id:
        env["SLIPGUARD_INSTANCE_ID"] = instance_id
    out = open(log, "ab")  # noqa: SIM115 (the process owns it)
    return subprocess.Popen([sys.executable, "-m", "streams", "join"], env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _committed(reader: LagReader, s: Settings, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    try:
        return reader.committed(s.join_group, tps)
    except Exception:  # noqa: BLE001 (coordinator moving: not yet)
        return {}


def _until_all_move(reader: LagReader, s: Settings, tps: list[tuple[str, int]], since: float,
                    timeout: float = 120) -> float:
    before = _committed(reader, s, tps)
    while time.monotonic() - since < timeout:
        now = _committed(reader, s, tps)
        if now and all(now.get(tp, -1) > before.get(tp, -1) for tp in tps):
            return time.monotonic() - since
        time.sleep(0.1)
    return float("nan")


def _case(s: Settings, name: str, logs: str) -> float:
    c = s.with_prefix(f"fo-{name}-{uuid.uuid4().hex[:6]}", partitions=4, order_timeout="5s", grace="1s",
                      commit_interval="200ms", metrics_port=0)
    create_topics(c)
    tps = [(t, p) for t in (c.payments_topic, c.orders_topic) for p in range(4)]
    reader = LagReader(c, timeout=5)
    pays, ords, _ = plan(120_000, start_ms=int(time.time() * 1000) + 3_000, spacing_ms=0.5, timeout_ms=5_000,
                         seed=7)
    traffic = threading.Thread(target=produce, args=(c, merged(pays, ords)), kwargs={"realtime": True}, daemon=True)
    ids = {"restart": ["fo-a", None], "kill": [None, None], "leave": [None, None]}[name]
    procs = [_start(c, ids[0], f"{logs}/{name}-a.log")]
    if name != "restart":
        procs.append(_start(c, ids[1], f"{logs}/{name}-b.log"))
    try:
        traffic.start()
        time.sleep(12)  # joined, restored, processing live traffic
        victim = procs[0]
        victim.send_signal(signal.SIGTERM if name == "leave" else signal.SIGKILL)
        since = time.monotonic()
        if name == "restart":
            procs.append(_start(c, "fo-a", f"{logs}/{name}-a2.log"))
        return _until_all_move(reader, c, tps, since)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(60)
        reader.close()


def run(s: Settings, logs: str) -> FailoverFigures:
    os.makedirs(logs, exist_ok=True)
    print("bench-failover: kill -9, restarted with the same instance id ...", flush=True)
    same = _case(s, "restart", logs)
    print("bench-failover: kill -9 of one of two workers ...", flush=True)
    kill = _case(s, "kill", logs)
    print("bench-failover: SIGTERM of one of two workers ...", flush=True)
    leave = _case(s, "leave", logs)
    return FailoverFigures(round(same, 1), round(kill, 1), round(leave, 1))


def report(f: FailoverFigures) -> str:
    return "\n".join([
        "until every partition processes again (committed offsets move):",
        f"  kill -9, restarted at once with the same SLIPGUARD_INSTANCE_ID  {f.restart_same_id_s:.1f} s",
        f"  kill -9 of one of two workers (ids unset)                        {f.kill_one_of_two_s:.1f} s",
        f"  SIGTERM of one of two workers (clean leave)                     {f.clean_leave_one_of_two_s:.1f} s",
    ])
