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

And a third worker joining two, then one of the three leaving: the longest stop of the
partitions that kept their owner, and of those that moved (from the workers' logs), while
committed offsets are sampled every 0.1 s. Each for both group protocols (`consumer`,
KIP-848, the default on Kafka 4.0+, and `classic`), so that they compare in one run.
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
from pathlib import Path

from streams.kafka.topics import create_topics
from streams.ops.lag import LagReader
from streams.settings import Settings
from streams.tools.loadgen import merged, plan, produce


@dataclass
class FailoverFigures:
    """One group protocol's figures (seconds)."""
    protocol: str
    restart_same_id_s: float = float("nan")
    kill_one_of_two_s: float = float("nan")
    clean_leave_one_of_two_s: float = float("nan")
    join_kept_max_pause_s: float = float("nan")
    join_moved_max_pause_s: float = float("nan")
    leave_kept_max_pause_s: float = float("nan")
    leave_moved_max_pause_s: float = float("nan")
    calm_max_pause_s: float = float("nan")  # the same, over 10 s of calm before: the baseline


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


def _case(s: Settings, name: str, logs: str, protocol: str) -> float:
    c = s.with_prefix(f"fo-{name}-{protocol}-{uuid.uuid4().hex[:6]}", partitions=4, order_timeout="5s", grace="1s",
                      commit_interval="200ms", metrics_port=0, group_protocol=protocol)
    create_topics(c)
    tps = [(t, p) for t in (c.payments_topic, c.orders_topic) for p in range(4)]
    reader = LagReader(c, timeout=5)
    pays, ords, _ = plan(120_000, start_ms=int(time.time() * 1000) + 3_000, spacing_ms=0.5, timeout_ms=5_000,
                         seed=7)
    traffic = threading.Thread(target=produce, args=(c, merged(pays, ords)), kwargs={"realtime": True}, daemon=True)
    # Only the restarted worker has an id of its own (a StatefulSet pod); the others, the default.
    procs = [_start(c, "fo-a" if name == "restart" else None, f"{logs}/{protocol}-{name}-a.log")]
    if name != "restart":
        procs.append(_start(c, None, f"{logs}/{protocol}-{name}-b.log"))
    try:
        traffic.start()
        time.sleep(12)  # joined, restored, processing live traffic
        victim = procs[0]
        victim.send_signal(signal.SIGTERM if name == "leave" else signal.SIGKILL)
        since = time.monotonic()
        if name == "restart":
            procs.append(_start(c, "fo-a", f"{logs}/{protocol}-{name}-a2.log"))
        return _until_all_move(reader, c, tps, since)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(60)
        reader.close()


def _owners(logs: list[str]) -> dict[int, str]:
    """Partition -> the log of the worker that holds it now."""
    return {p: log for log in logs for p in _owned(log)}


def _owned(log: str) -> set[int]:
    """The partitions a worker holds now, replaying its log's restored/revoked lines."""
    import re

    text = Path(log).read_text(encoding="utf-8", errors="replace") if os.path.exists(log) else ""
    held: set[int] = set()
    for verb, found in re.findall(r"(restored|revoked|lost) partitions \[([\d, ]*)\]", text):
        parts = {int(x) for x in found.split(",") if x.strip()}
        held = held | parts if verb == "restored" else held - parts
    return held


class _Sampler:
    """Committed offsets of every partition, sampled every 0.1 s: the longest time each
    partition's offsets did not move within a window."""

    def __init__(self, reader: LagReader, s: Settings, tps: list[tuple[str, int]]) -> None:
        self.reader, self.s, self.tps = reader, s, tps
        self.samples: list[tuple[float, dict[tuple[str, int], int]]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            got = _committed(self.reader, self.s, self.tps)
            if got:
                self.samples.append((time.monotonic(), got))
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)

    def longest_pause(self, partitions: set[int], start: float, end: float) -> float:
        longest = 0.0
        for tp in self.tps:
            if tp[1] not in partitions:
                continue
            last_change, last = start, None
            for t, got in self.samples:
                if t < start - 1 or t > end:
                    continue
                value = got.get(tp)
                if value != last:
                    if last is not None and t >= start:
                        longest = max(longest, t - last_change)
                    last_change, last = max(t, start), value
        return longest


def _rebalance(s: Settings, logs: str, protocol: str) -> tuple[float, float, float, float, float]:
    c = s.with_prefix(f"fo-rb-{protocol}-{uuid.uuid4().hex[:6]}", partitions=6, order_timeout="5s", grace="1s",
                      commit_interval="200ms", metrics_port=0, group_protocol=protocol)
    create_topics(c)
    tps = [(t, p) for t in (c.payments_topic, c.orders_topic) for p in range(6)]
    reader = LagReader(c, timeout=5)
    pays, ords, _ = plan(150_000, start_ms=int(time.time() * 1000) + 3_000, spacing_ms=0.5, timeout_ms=5_000, seed=8)
    threading.Thread(target=produce, args=(c, merged(pays, ords)), kwargs={"realtime": True}, daemon=True).start()
    names = [f"{logs}/{protocol}-rebalance-{x}.log" for x in "abc"]
    procs = [_start(c, None, names[0]), _start(c, None, names[1])]
    sampler = _Sampler(reader, c, tps)
    try:
        time.sleep(25)  # both started, assigned and processing: then 10 s of calm
        calm = sampler.longest_pause(set(range(6)), time.monotonic() - 10, time.monotonic())
        before = _owners(names)
        joined = time.monotonic()
        procs.append(_start(c, None, names[2]))
        time.sleep(20)
        # The broker's range assignor may shuffle partitions between the members already
        # there too: kept means the same owner before and after.
        kept = {p for p, owner in _owners(names).items() if before.get(p) == owner}
        join_kept = sampler.longest_pause(kept, joined, joined + 20)
        join_moved = sampler.longest_pause(set(range(6)) - kept, joined, joined + 20)
        # One of the three leaves cleanly.
        before = _owners(names)
        left = time.monotonic()
        procs[0].send_signal(signal.SIGTERM)
        time.sleep(15)
        kept = {p for p, owner in _owners(names).items() if before.get(p) == owner}
        leave_kept = sampler.longest_pause(kept, left, left + 15)
        leave_moved = sampler.longest_pause(set(range(6)) - kept, left, left + 15)
        return join_kept, join_moved, leave_kept, leave_moved, calm
    finally:
        sampler.stop()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(60)
        reader.close()


def run(s: Settings, logs: str, cases: str = "all", protocols: str = "consumer,classic") -> list[FailoverFigures]:
    """cases: all, failover (kill -9 and clean leave) or rebalance (a third joins, one
    leaves); each for every protocol named (consumer: KIP-848, the default on Kafka 4.0+)."""
    os.makedirs(logs, exist_ok=True)
    out = []
    for protocol in [p.strip() for p in protocols.split(",") if p.strip()]:
        f = FailoverFigures(protocol)
        if cases in ("all", "failover"):
            say = f"bench-failover ({protocol}):"
            print(f"{say} kill -9, restarted with the same instance id ...", file=sys.stderr, flush=True)
            f.restart_same_id_s = round(_case(s, "restart", logs, protocol), 1)
            print(f"{say} kill -9 of one of two workers ...", file=sys.stderr, flush=True)
            f.kill_one_of_two_s = round(_case(s, "kill", logs, protocol), 1)
            print(f"{say} SIGTERM of one of two workers ...", file=sys.stderr, flush=True)
            f.clean_leave_one_of_two_s = round(_case(s, "leave", logs, protocol), 1)
        if cases in ("all", "rebalance"):
            print(f"bench-failover ({protocol}): a third worker joins two, then one of three leaves ...",
                  file=sys.stderr, flush=True)
            figures = _rebalance(s, logs, protocol)
            (f.join_kept_max_pause_s, f.join_moved_max_pause_s, f.leave_kept_max_pause_s,
             f.leave_moved_max_pause_s, f.calm_max_pause_s) = (round(x, 2) for x in figures)
        out.append(f)
    return out


def report(figures: list[FailoverFigures]) -> str:
    lines = []
    for f in figures:
        lines += [
            f"group protocol {f.protocol}",
            "  until every partition processes again (committed offsets move):",
            f"    kill -9, restarted at once with the same SLIPGUARD_INSTANCE_ID  {f.restart_same_id_s:.1f} s",
            f"    kill -9 of one of two workers (ids unset)                        {f.kill_one_of_two_s:.1f} s",
            f"    SIGTERM of one of two workers (clean leave)                     {f.clean_leave_one_of_two_s:.1f} s",
            "  longest stop of committed offsets while the group changes:",
            (f"    a third joins: partitions that kept their owner {f.join_kept_max_pause_s:.2f} s, "
             f"that moved {f.join_moved_max_pause_s:.2f} s"),
            (f"    one of three leaves (SIGTERM): kept {f.leave_kept_max_pause_s:.2f} s, "
             f"moved {f.leave_moved_max_pause_s:.2f} s"),
            f"    baseline, 10 s of calm before (commits every 200 ms, same traffic): {f.calm_max_pause_s:.2f} s",
        ]
    return "\n".join(lines)
