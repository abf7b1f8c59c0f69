"""`make soak` (issue 29, part 5): the three-broker cluster under live traffic for a while,
join workers and recovery writers leaving and coming back, and a fault every two minutes
drawn from the fault tests' list; at the end the fault tests' invariants
(tests/cluster/invariants.py) and each process's memory over time (tests/cluster/memory.py).

    python -m tests.cluster.soak --minutes 30 --rate 5000 [--seed N]

The processes are the fault tests' (tests/cluster/harness.py): an `exactly_once` join group
and an `at_least_once` one, each with its own input topics and half the traffic, both
writing one set of output topics; the recovery writers; the lag exporter. By default the
exactly_once group has two workers and the at_least_once group one (three join workers),
and two writers. w1 of each group bootstraps from a per-client proxy set of its own, so
that it alone can be cut off. The invariants are per guarantee: each due recovery once
for read_committed readers under exactly_once, at least once under at_least_once; for
both, no false recovery, every row and audit row once, no process down for good, ready at
the end, the lag series continuous. A payment recovered although its order was produced
is due when the contract makes it so (late by disorder, or in flight:
tests/cluster/recoveries.py), and false otherwise; the count of each kind is printed.

The PostgreSQL failover is among the faults: the soak starts a synchronous standby of the
stack's PostgreSQL (stack.sh pg-standby-up) and gives every process both (a multi-host URL,
target_session_attrs=read-write); each failover (the primary killed -9, the standby
promoted) is undone by a clean switchover back (stack.sh pg-failback), and at the end the
stack is put back as `pg-up` left it (pg-failover-reset). `--no-pg-failover` leaves it out.

Needs the cluster (deploy/local/stack.sh cluster-up) and PostgreSQL (stack.sh pg-up), on
the soak's own ports (PORTS; `make soak` starts both there), or with the same
SLIPGUARD_CLUSTER_*, SLIPGUARD_TOXIPROXY_PORT, SLIPGUARD_PG_PORT and SLIPGUARD_PG_STANDBY_PORT
as they were started with: the faults start and stop nodes through stack.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from streams.settings import Settings, load_settings
from tests.cluster.cluster import DESCRIPTION, NODES, ROOT, STACK, Cluster
from tests.cluster.harness import GUARANTEES, Run, Verdict
from tests.cluster.invariants import Outages
from tests.cluster.memory import CALM_S, Judged, Sample, Sampler, calm, judge, table
from tests.cluster.schedule import FAULTS, MEMBERSHIP_AFTER_S, Member, Slot, clock, plan
from tests.integration.conftest import answering
from tests.integration.pg_failover import Failover, rows_at

#: Events per order of the load generator's default shares: a payment each (2 % repeated,
#: 0.2 % a second one), an order for 96 % (2 % failed, 2 % missing).
EVENTS_PER_ORDER = 1.98
SEGMENT_S = 15.0  # traffic comes in consecutive segments of this length (harness.Run.start_traffic)
SESSION_S = 10.0  # the join group's session timeout (set by the join as a group config)
#: A membership change counts as busy this long: a leave moves partitions after the session
#: timeout and their new owner restores them; a join restores and catches up.
SETTLE_S = 20.0
SAMPLE_S = 5.0
#: The soak's own ports, all below Linux's ephemeral range (32768-60999 by default,
#: net.ipv4.ip_local_port_range), where a client's source port can hold a port a node is
#: about to bind (a 30-minute run's node 3 could not bind 49154 in a rolling restart), and
#: clear of stack.sh's defaults (Kafka 9092-9094, PostgreSQL 25432 and its standby 25433,
#: the cluster 29092-29191), so that a soak does not meet another worktree's stack on them.
#: PostgreSQL's standby (the failover's) on the primary's port + 1, as stack.sh's default.
#: The cluster's bases mirror the defaults' layout (31092-31191: stack.sh, "Ports"). The
#: Makefile's soak target sets the same (test_soak checks); a variable already set wins.
PORTS = {"SLIPGUARD_CLUSTER_PORT": 31092, "SLIPGUARD_CLUSTER_SET_PORT": 31112,
         "SLIPGUARD_CLUSTER_LISTENER_PORT": 31142, "SLIPGUARD_CLUSTER_INTERNAL_PORT": 31172,
         "SLIPGUARD_CLUSTER_CONTROLLER_PORT": 31182, "SLIPGUARD_TOXIPROXY_PORT": 31191, "SLIPGUARD_PG_PORT": 31432,
         "SLIPGUARD_PG_STANDBY_PORT": 31433}
#: each process's metrics port (/metrics, /readyz), in turn: a new one each start
METRICS_PORTS = range(31300, 31400)


class PortBlock:
    """The next free port of a block, in turn (the fault tests take any free port, which
    the kernel gives from the ephemeral range)."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports, self.next = ports, 0

    def __call__(self) -> int:
        for _ in range(len(self.ports)):
            port = self.ports[self.next % len(self.ports)]
            self.next += 1
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
        raise RuntimeError(f"soak: no free port among {self.ports[0]}-{self.ports[-1]}: stop what holds them "
                           "(ss -ltnp) or change METRICS_PORTS in tests/cluster/soak.py")


class Soak:
    """The run's processes as members that leave and come back, and the faults."""

    def __init__(self, run: Run, members: list[Member], t0: float, failover: Failover | None = None) -> None:
        self.run, self.cluster, self.t0 = run, run.cluster, t0
        self.failover = failover  # PostgreSQL's primary and its standby (None: no pg_failover)
        self.members = {m.name: m for m in members}
        self.lock = threading.Lock()  # between stopping a process and the sampler noticing deaths
        self.incarnation = dict.fromkeys(self.members, 1)
        self.busy: list[tuple[float, float]] = []
        self.marks: dict[int, str] = {}  # minute -> F (a fault) or M (a membership change)
        self.events: list[dict[str, object]] = []
        self.outages: Outages = {}
        self.unclean: dict[str, int] = {}  # stopped by SIGTERM, exit code not 0
        self.deaths: dict[str, tuple[float, int]] = {}  # exited unasked: (when, exit code)
        self.timeline: list[str] = []  # what happened, one line each
        self.struck: list[tuple[float, str]] = []  # (when, which fault)
        self.closed = False

    def t(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        print(f"[{clock(self.t())}] {text}", flush=True)

    # ------------------------------------------------------------ members
    def start(self, name: str) -> None:
        m = self.members[name]
        log = self.run.log_path(name)
        if log.exists():  # each incarnation its own log: the harness reads a worker's partitions from it
            log.rename(log.with_suffix(f".{self.incarnation[name]}.log"))
            self.incarnation[name] += 1
        with self.lock:
            if m.join:
                group, worker = name.split("/")
                self.run.worker(group, worker, proxy_set=m.proxy_set)
            else:
                self.run.writer(name)

    def stop(self, name: str, how: str) -> None:
        with self.lock:
            proc, _log = self.run.procs.pop(name)
            proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
        try:
            code = proc.wait(60 if how == "stop" else 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(10)
        if how == "stop" and code != 0:
            self.unclean[name] = code

    def processes(self) -> dict[str, tuple[int, int | None]]:
        """What runs now: name -> (pid, metrics port); an exit nobody asked for is noted."""
        out = {}
        with self.lock:
            for name, (proc, _log) in self.run.procs.items():
                code = proc.poll()
                if code is not None:
                    if name not in self.deaths:
                        self.deaths[name] = (self.t(), code)
                        self.say(f"{name} EXITED by itself (exit {code})")
                    continue
                out[name] = (proc.pid, self.run.poller.exporter if name == "exporter" else
                             self.run.poller.ports.get(name))
        return out

    def change(self, slot: Slot) -> None:
        at = self.t()
        if slot.change == "start":
            self.start(slot.member)
        elif slot.member in self.run.procs:
            self.stop(slot.member, slot.change)
        else:  # (it exited by itself: noted by the sampler)
            return
        self.busy.append((at, at + SETTLE_S))
        self._mark(at, at + SETTLE_S, "M")
        self.events.append({"at_s": round(at, 1), "member": slot.member, "change": slot.change})
        self.timeline.append(f"{clock(at)} {slot.member}: {slot.change}")
        self.say(f"{slot.member}: {slot.change}")

    def _mark(self, start: float, end: float, mark: str) -> None:
        for m in range(int(start // 60) + 1, int(end // 60) + 2):
            if 60 * (m - 1) < end and self.marks.get(m) != "F":
                self.marks[m] = mark

    # ------------------------------------------------------------ the schedule
    def chaos(self, slots: list[Slot]) -> None:
        for slot in slots:
            self._sleep_until(slot.at)
            started = self.t()
            self.struck.append((started, slot.fault))
            self.say(f"fault {slot.fault}" + (f" at {slot.target}" if slot.target else ""))
            try:
                facts: dict[str, object] = getattr(self, f"_{slot.fault}")(slot.target)
                error = None
            except Exception as exc:  # noqa: BLE001 (recorded; the cluster is healed and the soak goes on)
                facts, error = {}, f"{type(exc).__name__}: {str(exc)[:1500]}"
                self.say(f"fault {slot.fault} FAILED: {error[:300]}")
            try:
                healed_s = self._heal()
            except AssertionError as exc:  # (the cluster cannot be made whole: no more faults; drain and judge)
                self.say(f"the cluster could not be healed after {slot.fault}: the chaos stops here. {exc}")
                self.timeline.append(f"{clock(started)} {slot.fault}: the cluster could not be healed, chaos stopped")
                self.events.append({"at_s": round(started, 1), "fault": slot.fault, "unhealed": str(exc)[:1500]})
                return
            ended = self.t()
            self.busy.append((started, ended))
            self._mark(started, ended, "F")
            self.events.append({"at_s": round(started, 1), "fault": slot.fault, "target": slot.target,
                                "undone_at_s": round(ended, 1), "healed_s": round(healed_s, 1), **facts,
                                **({"error": error} if error else {})})
            self.timeline.append(f"{clock(started)}-{clock(ended)} {slot.fault}" + (
                f" at {slot.target}" if slot.target else "") + (f": FAILED {error}" if error else ""))
            self.say(f"fault {slot.fault} undone ({ended - started:.0f} s): {json.dumps(facts, default=str)}")
            self._sleep_until(max(slot.at + MEMBERSHIP_AFTER_S, self.t()))
            self.change(slot)

    def _sleep_until(self, at: float) -> None:
        while self.t() < at:
            time.sleep(min(1.0, at - self.t()))

    def _heal(self, attempts: int = 3) -> float:
        """Every node running and thawed, no toxic, every partition in sync (the next fault
        starts from a healthy cluster). A node that fails to start is started again: its
        ports lie in the ephemeral range when the cluster runs on high ports, and a client's
        source port can hold one for a while (seen: node 3 could not bind 49154 in a rolling
        restart)."""
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                self.cluster.healthy(self.run.settings["exactly_once"])
                return time.monotonic() - started
            except AssertionError as exc:
                if attempt == attempts:
                    raise
                self.say(f"healing the cluster failed ({str(exc).splitlines()[-1][:200]}); again in 10 s")
                time.sleep(10)
        raise AssertionError("unreachable")

    def _until(self, condition: Callable[[], bool], what: str, timeout: float) -> float:
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"not within {timeout:.0f} s: {what}")
            time.sleep(0.2)
        return round(time.monotonic() - started, 1)

    # ------------------------------------------------------------ the faults (FAULTS)
    def _kill_and_start(self, node: int, away: float = 10.0) -> dict[str, object]:
        self.cluster.node("kill", node)
        killed = time.monotonic()
        time.sleep(away)
        start_s = self.cluster.node("start", node)
        return {"node": node, "away_s": round(time.monotonic() - killed, 1), "start_s": round(start_s, 1)}

    def _leader_kill(self, target: str) -> dict[str, object]:
        s = self.run.settings[target.split("/")[0]]
        owned = self.run.owned(target) or [0]
        victim = self.cluster.leaders(s, s.payments_topic)[owned[0]]
        led = {t: sorted(p for p, n in self.cluster.leaders(s, t).items() if n == victim)
               for t in (s.payments_topic, s.orders_topic)}
        return {"owned": owned, "led": led, **self._kill_and_start(victim)}

    def _txn_coordinator_kill(self, target: str) -> dict[str, object]:
        s = self.run.settings["exactly_once"]
        txn_id = f"{s.join_group}-{target.split('/')[1]}"
        state: dict[str, str] = {}
        for _ in range(3):  # (commits every 200 ms: a transaction is open nearly all the time under traffic)
            state = self.cluster.describe_transaction(txn_id)
            if state.get("TransactionState") == "Ongoing":
                break
        victim = int(state["CoordinatorId"])  # (kafka-transactions.sh's; FindCoordinator's is checked after)
        facts = self._kill_and_start(victim)
        return {"transaction": state.get("TransactionState"), **facts,
                "coordinator_after": self.cluster.transaction_coordinator(s, txn_id)}

    def _group_coordinator_kill(self, target: str) -> dict[str, object]:
        """The target leaves cleanly and, once its session is over (its partitions moved),
        joins again: its group's coordinator is killed as soon as it asks to join."""
        s = self.run.settings[target.split("/")[0]]
        victim = self.cluster.group_coordinator(s, s.join_group)
        self.stop(target, "stop")
        time.sleep(SESSION_S + 2)
        self.start(target)
        joined_s = self._until(lambda: "joining group" in self.run.log(target), f"{target} asks to join", 60)
        facts = self._kill_and_start(victim)
        owns_s = self._until(lambda: bool(self.run.owned(target)), f"{target} owns partitions again", 120)
        return {"asked_to_join_s": joined_s, **facts, "owns_partitions_after_start_s": owns_s,
                "coordinator_after": self.cluster.group_coordinator(s, s.join_group)}

    def _rolling_restart(self, _target: None) -> dict[str, object]:
        steps = {}
        for node in NODES:
            stop_s = self.cluster.node("stop", node)
            start_s = self.cluster.node("start", node)
            in_sync_s = self.cluster.wait_fully_replicated(self.run.settings["exactly_once"])
            steps[node] = {"stop_s": round(stop_s, 1), "start_s": round(start_s, 1), "in_sync_s": round(in_sync_s, 1)}
        return {"steps": steps}

    def _slow_broker(self, target: str, seconds: float = 60.0) -> dict[str, object]:
        s = self.run.settings["exactly_once"]
        victim = self.cluster.transaction_coordinator(s, f"{s.join_group}-{target.split('/')[1]}")
        for proxy in self.cluster.proxies_of_node(victim):
            self.cluster.toxiproxy.latency(proxy, 1000)
        time.sleep(seconds)
        self.cluster.toxiproxy.reset()
        return {"node": victim, "slow_s": seconds}

    def _cut_off(self, target: str, seconds: float = 20.0) -> dict[str, object]:
        proxy_set = self.members[target].proxy_set
        assert proxy_set is not None
        for proxy in self.cluster.proxies_of_set(proxy_set):
            self.cluster.toxiproxy.disable(proxy)
        cut_at = time.monotonic()
        time.sleep(seconds)
        for proxy in self.cluster.proxies_of_set(proxy_set):
            self.cluster.toxiproxy.enable(proxy)
        back_at = time.monotonic()
        self.outages.setdefault(target, []).append((cut_at, back_at))
        rejoined_s = self._until(lambda: "lost partitions" in self.run.log(target) and bool(self.run.owned(target)),
                                 f"{target} fenced, then back in its group", 120)
        return {"proxy_set": proxy_set, "cut_s": round(back_at - cut_at, 1), "rejoined_s": rejoined_s}

    def _pg_failover(self, _target: None) -> dict[str, object]:
        """The primary killed -9, the standby promoted 1 s later (as test_faults' PostgreSQL
        test), until the writers write on it; then undone: the stack's primary copied anew
        from the promoted node and switched back to cleanly (stack.sh pg-failback), until the
        writers write there again. Each running writer's outage is from the kill until the
        writers write on the promoted node: it must say not ready in it (its writes fail),
        and ready after. (The switchover back is not one: a writer that wrote nothing in
        its second or two without a primary never notices it.)"""
        f = self.failover
        assert f is not None, "no standby: the soak was started with --no-pg-failover"
        url = self.run.settings["exactly_once"].database_url.get_secret_value()  # both nodes, the run's schema
        writers = [n for n, (proc, _log) in self.run.procs.items() if n.startswith("writer") and proc.poll() is None]
        before = rows_at(url)
        killed, promoted = f.fail_over()
        at_promotion = self._rows(url)
        self._until(lambda: rows_at(url) > at_promotion, "the writers write on the promoted standby", 120)
        resumed = time.monotonic()
        for name in writers:
            self.outages.setdefault(name, []).append((killed, resumed))
        at_failback = self._rows(url)
        failback_s = f.stack("pg-failback")
        back = time.monotonic()
        after_failback = self._rows(url)
        self._until(lambda: rows_at(url) > after_failback, "the writers write on the primary again", 120)
        again = time.monotonic()
        return {"writers": writers, "rows_before": before, "rows_at_promotion": at_promotion,
                "rows_at_failback": at_failback, "rows_after_failback": after_failback,
                "kill_to_writes_s": round(resumed - killed, 1), "promotion_to_writes_s": round(resumed - promoted, 1),
                "failback_s": round(failback_s, 1), "failback_to_writes_s": round(again - back, 1)}

    def _rows(self, url: str) -> int:
        """Rows recovered at the node taking writes now (it may take a moment to answer)."""
        deadline = time.monotonic() + 60
        while (rows := rows_at(url)) < 0:
            if time.monotonic() > deadline:
                raise TimeoutError("not within 60 s: PostgreSQL's primary answers")
            time.sleep(0.2)
        return rows


# ------------------------------------------------------------------ traffic


def traffic(run: Run, per_second: float, seconds: float, halt: threading.Event) -> threading.Thread:
    """Consecutive segments of live traffic for each group, `per_second` orders' worth each,
    until `seconds` have passed (or `halt`)."""
    def loop() -> None:
        until = time.monotonic() + seconds
        while not halt.is_set() and (left := until - time.monotonic()) >= 1:
            made = time.monotonic()
            run.start_traffic(min(SEGMENT_S, left), int(per_second))
            # (a segment starts 0.5 s after it is made: the next one is made 0.5 s before its end)
            halt.wait(max(0.0, min(SEGMENT_S, left) - (time.monotonic() - made)))

    thread = threading.Thread(target=loop, name="traffic", daemon=True)
    thread.start()
    return thread


def rates(run: Run, seconds: float, t0: float) -> dict[str, object]:
    """Events produced and committed (both groups' inputs) per second, per minute and over
    the traffic's span, from the lag exporter's log end offsets and committed offsets."""
    inputs = {(s.join_group, t) for s in run.settings.values() for t in (s.payments_topic, s.orders_topic)}
    points = [(s.t - t0, sum(v for k, v in s.ends.items() if k[:2] in inputs),
               sum(v for k, v in s.series.items() if k[:2] in inputs))
              for s in run.poller.lag if s.status == 200 and s.ends]

    def at(t: float) -> tuple[float, float, float] | None:
        before = [p for p in points if p[0] <= t]
        return before[-1] if before else (points[0] if points else None)  # (the first scrape came after t)

    minutes = []
    for m in range(1, int(seconds // 60) + 1):
        a, b = at(60 * (m - 1)), at(60 * m)
        if a and b and b[0] > a[0]:
            minutes.append({"minute": m, "produced_per_s": round((b[1] - a[1]) / (b[0] - a[0])),
                            "committed_per_s": round((b[2] - a[2]) / (b[0] - a[0]))})
    start, end = at(0), at(seconds)
    planned = sum(t.total for segments in run.traffic.values() for t in segments)
    return {"planned_events": planned, "planned_per_s": round(planned / seconds),
            "produced_per_s": round((end[1] - start[1]) / (end[0] - start[0])) if start and end and end[0] > start[0]
            else None, "per_minute": minutes}


def stale_lag(run: Run, t0: float, over: float = 10.0) -> list[dict[str, float]]:
    """When the lag exporter's numbers were more than `over` s old: (from, to, the oldest)."""
    out: list[dict[str, float]] = []
    for s in run.poller.lag:
        if s.age is not None and s.age > over:
            if out and s.t - t0 - out[-1]["to_s"] < 2:
                out[-1] |= {"to_s": round(s.t - t0, 1), "age_max_s": max(out[-1]["age_max_s"], round(s.age, 1))}
            else:
                out.append({"from_s": round(s.t - t0, 1), "to_s": round(s.t - t0, 1), "age_max_s": round(s.age, 1)})
    return out


# ------------------------------------------------------------------ the run


def members(eos: int, alos: int, writers: int) -> list[Member]:
    """w1 of the exactly_once group is resident (schedule.Member) when the group has another
    worker to leave and come back."""
    out = [Member(f"exactly_once/w{i}", join=True, eos=True, proxy_set=1 if i == 1 else None,
                  resident=i == 1 and eos > 1)
           for i in range(1, eos + 1)]
    out += [Member(f"at_least_once/w{i}", join=True, proxy_set=2 if i == 1 else None) for i in range(1, alos + 1)]
    return out + [Member(f"writer{i}", join=False) for i in range(1, writers + 1)]


def _cluster() -> Cluster:
    if not DESCRIPTION.exists():
        raise SystemExit(f"soak: {DESCRIPTION} is missing: start the cluster (deploy/local/stack.sh cluster-up)")
    cluster = Cluster.described()
    port = cluster.bootstrap.split(",")[0].rsplit(":", 1)[1]
    want = os.environ.get("SLIPGUARD_CLUSTER_PORT", str(PORTS["SLIPGUARD_CLUSTER_PORT"]))
    if port != want:
        raise SystemExit(f"soak: the cluster in {DESCRIPTION} bootstraps on port {port}, but SLIPGUARD_CLUSTER_PORT "
                         f"is {want}: stack.sh would start nodes on other ports. Export the SLIPGUARD_CLUSTER_* and "
                         "SLIPGUARD_TOXIPROXY_PORT variables the cluster was started with.")
    return cluster


def _base(cluster: Cluster, pg_failover: bool) -> tuple[Settings, Failover | None]:
    """The settings every process derives from; with `pg_failover`, a synchronous standby of
    the stack's PostgreSQL started (whatever a run cut short left: pg-failover-reset first),
    and the database URL naming both."""
    s = load_settings().derive(bootstrap_servers=cluster.bootstrap)
    if "SLIPGUARD_DATABASE_URL" not in os.environ and "SLIPGUARD_PG_PORT" in os.environ:
        s = s.derive(database_url=f"postgresql://slipguard:slipguard@127.0.0.1:{os.environ['SLIPGUARD_PG_PORT']}"
                                  "/slipguard")
    f = None
    if pg_failover:
        url, port = s.database_url.get_secret_value(), int(os.environ["SLIPGUARD_PG_PORT"])
        parts = urlsplit(url)
        if (parts.hostname, parts.port) != ("127.0.0.1", port):
            raise SystemExit(f"soak: the PostgreSQL failover is of the stack's PostgreSQL (127.0.0.1:{port}), not "
                             f"{parts.hostname}:{parts.port} (SLIPGUARD_DATABASE_URL): unset it, or --no-pg-failover")
        f = Failover(url, int(os.environ["SLIPGUARD_PG_STANDBY_PORT"]))
        try:
            f.stack("pg-failover-reset")
            f.stack("pg-standby-up")
        except AssertionError as exc:
            raise SystemExit(f"soak: PostgreSQL's standby could not be started: {exc}") from None
        s = s.derive(database_url=f.both(url))
    try:
        return answering(s, "start the cluster (deploy/local/stack.sh cluster-up) and PostgreSQL (stack.sh pg-up)"), f
    except pytest.fail.Exception as exc:
        raise SystemExit(f"soak: {exc.msg}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.cluster.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30, help="how long the traffic and the faults last")
    p.add_argument("--rate", type=float, default=5000, help="events per second, both groups' inputs together")
    p.add_argument("--seed", type=int, help="the schedule's and the traffic's seed (default: drawn, printed)")
    p.add_argument("--every", type=float, default=120, help="seconds between faults")
    p.add_argument("--eos-workers", type=int, default=2, help="join workers of the exactly_once group")
    p.add_argument("--alos-workers", type=int, default=1, help="join workers of the at_least_once group")
    p.add_argument("--writers", type=int, default=2, help="recovery writers")
    p.add_argument("--late-horizon", default="5m",
                   help="the join's LATE_HORIZON here (1h by default): the state stops growing after it, so memory "
                        "can be judged within the run. Longer than any stall a fault causes: a late order read "
                        "after it is rightly not reported late, and the checker would count it lost (with 1m, a "
                        "slow group coordinator held a worker for 60 s and 8 late orders went unreported)")
    p.add_argument("--faults", default=",".join(FAULTS),
                   help="the faults dealt, comma-separated (default: all of tests/cluster/schedule.py's FAULTS)")
    p.add_argument("--no-pg-failover", action="store_true",
                   help="leave the PostgreSQL failover out of the faults (no standby is started)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    faults = tuple(f for f in args.faults.split(",") if f and not (args.no_pg_failover and f == "pg_failover"))
    unknown = [f for f in faults if f not in FAULTS]
    if unknown or not faults:
        print(f"soak: --faults: {unknown or 'none'}: not faults of {', '.join(FAULTS)}", file=sys.stderr)
        return 2
    for name, port in PORTS.items():  # (stack.sh, which the faults call, reads them too)
        os.environ.setdefault(name, str(port))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    cluster = _cluster()
    base, failover = _base(cluster, "pg_failover" in faults)
    try:
        return _soak(args, seed, faults, cluster, base, failover)
    finally:
        if failover is not None:  # (the standby gone, the primary on its own port: a next run starts clean)
            try:
                failover.stack("pg-failover-reset")
            except AssertionError as exc:
                print(f"soak: PostgreSQL could not be put back (stack.sh pg-failover-reset): {exc}")


def _soak(args: argparse.Namespace, seed: int, faults: tuple[str, ...], cluster: Cluster, base: Settings,
          failover: Failover | None) -> int:
    seconds = args.minutes * 60
    cast = members(args.eos_workers, args.alos_workers, args.writers)
    slots = plan(seed, seconds, cast, every=args.every, faults=faults)
    per_second = args.rate / len(GUARANTEES) / EVENTS_PER_ORDER
    _header(args, seed, cluster, cast, slots, per_second, failover)

    logs = ROOT / ".stack" / "soak" / f"{seed}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    logs.mkdir(parents=True)
    _quiet_clients(logs / "clients.log")
    cluster.healthy(base)
    run = Run(cluster, base, logs, f"soak-{seed}", seed=seed)
    run.free_port = PortBlock(METRICS_PORTS)
    for g in GUARANTEES:
        run.settings[g] = run.settings[g].derive(late_horizon=args.late_horizon)
    soak = Soak(run, cast, time.monotonic(), failover)
    halt = threading.Event()
    sampler: Sampler | None = None
    try:
        for m in cast:
            soak.start(m.name)
        run.exporter()
        run.wait_ready(timeout=180)
        soak.t0 = time.monotonic()
        sampler = Sampler(soak.processes, soak.t0, SAMPLE_S, logs / "memory.jsonl")
        traffic(run, per_second, seconds, halt)
        soak.say(f"traffic: {per_second:.0f} orders/s for each group (~{args.rate:.0f} events/s); logs in {logs}")
        soak.chaos(slots)
        soak._sleep_until(seconds)
        return _finish(run, soak, sampler, args, seed, slots, seconds)
    finally:
        halt.set()
        if sampler is not None:
            sampler.stop()
        if not soak.closed:  # (stopped early: the processes stop, the cluster is left healthy)
            _close(run, soak, clean=False)
            try:
                cluster.healthy(base)
            except AssertionError as exc:
                print(f"soak: the cluster is left unhealthy: {exc}")


def _finish(run: Run, soak: Soak, sampler: Sampler, args: argparse.Namespace, seed: int, slots: list[Slot],
            seconds: float) -> int:
    for m in soak.members:
        if m not in run.procs:
            soak.start(m)
            soak.say(f"{m}: start (the end)")
    drain_error = None
    try:
        run.wait_ready(timeout=180)
        drained = time.monotonic()
        run.finish(timeout=max(300.0, seconds / 2))
        soak.say(f"drained: every input committed, every row written ({time.monotonic() - drained:.0f} s)")
    except AssertionError as exc:
        drain_error = str(exc)[:3000]
        soak.say(f"DRAIN FAILED: {drain_error[:500]}")
    sampler.stop()
    stale = stale_lag(run, soak.t0)
    facts = {"seed": seed, "minutes": args.minutes, "rate": args.rate, "every_s": args.every,
             "late_horizon": args.late_horizon, "schedule": [s.__dict__ for s in slots], "events": soak.events,
             "rates": rates(run, seconds, soak.t0), "lag_stale": stale,
             "stopped_uncleanly": soak.unclean,
             "exited_by_themselves": soak.deaths, **({"drain_error": drain_error} if drain_error else {})}
    verdict = run.judge(soak.outages, **facts)
    points = calm([slot.at - 0.5 for slot in slots] + [seconds], soak.busy)  # (just before each fault)
    s = run.settings["exactly_once"]
    warm_up = (s.order_timeout + s.grace + s.late_horizon) / 1000 + 10
    judged, not_judged = judge(sampler.samples, points, warm_up, soak.struck, SAMPLE_S)
    closed = _close(run, soak, clean=not verdict.broken and not drain_error)
    broken = verdict.broken + [f"{n} stopped by SIGTERM exited {c}" for n, c in soak.unclean.items()] + closed + \
        ([f"the drain: {drain_error}"] if drain_error else [])
    verdict.report |= {"memory": {"calm_points_s": points, "warm_up_s": warm_up,
                                  "judged": [j.line() for j in judged], "not_judged": not_judged,
                                  "samples": [s.__dict__ for s in sampler.samples]},
                       "violations": broken}
    verdict.path.write_text(json.dumps(verdict.report, indent=2, default=str))
    _results(verdict, broken, facts, stale, sampler.samples, soak, points, judged + not_judged, int(seconds // 60),
             warm_up)
    grows = [j for j in judged if j.grows]
    print(f"\nsoak: {'FAILED' if broken or grows else 'passed'} (report: {verdict.path})")
    return 1 if broken or grows else 0


def _quiet_clients(path: Path) -> None:
    """librdkafka's log lines of the traffic's producers (every disconnection a fault makes)
    go to a file: they write to file descriptor 2, which now points there; Python's own
    errors stay on the terminal (sys.stderr is stdout's)."""
    print(f"soak: the Kafka clients' own log lines go to {path}", flush=True)
    sys.stderr.flush()
    sys.stderr = sys.stdout
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)


def _close(run: Run, soak: Soak, *, clean: bool) -> list[str]:
    soak.closed = True
    try:
        run.close(clean=clean)
    except AssertionError as exc:
        return [str(exc).splitlines()[0]]
    return []


def _header(args: argparse.Namespace, seed: int, cluster: Cluster, cast: list[Member], slots: list[Slot],
            per_second: float, failover: Failover | None) -> None:
    print(f"soak: seed {seed} ({args.minutes:g} min, {args.rate:.0f} events/s = {per_second:.0f} orders/s for each "
          f"of {len(GUARANTEES)} groups, a fault every {args.every:.0f} s; late horizon {args.late_horizon})")
    print(f"cluster: {cluster.bootstrap} (Toxiproxy {cluster.toxiproxy.url}); stack.sh: {STACK}; PostgreSQL port "
          f"{os.environ['SLIPGUARD_PG_PORT']}; metrics ports {METRICS_PORTS.start}-{METRICS_PORTS.stop - 1}")
    print("processes: " + ", ".join(f"{m.name}" + (f" (proxy set {m.proxy_set})" if m.proxy_set else "")
                                    + (" (resident: never leaves, judged for memory)" if m.resident else "")
                                    for m in cast) + ", exporter")
    if failover is not None:
        print(f"PostgreSQL failover: on (a synchronous standby on port {failover.standby_port}, every process given "
              "both; each failover undone by stack.sh pg-failback: the primary copied anew from the promoted standby, "
              "switched back to cleanly, a fresh standby)")
    else:
        print("PostgreSQL failover: off (" + ("--no-pg-failover" if args.no_pg_failover else "not in --faults") + ")")
    print(f"schedule ({len(slots)} faults; minutes after the traffic starts):")
    for slot in slots:
        print("  " + slot.describe())
    sys.stdout.flush()


def _results(verdict: Verdict, broken: list[str], facts: dict[str, object], stale: list[dict[str, float]],
             samples: list[Sample], soak: Soak,
             points: list[float], judged: list[Judged | str], minutes: int, warm_up: float) -> None:
    report = verdict.report
    r = facts["rates"]
    assert isinstance(r, dict)
    print("\n== what ran")
    print(f"traffic: {r['planned_events']:,} events planned ({r['planned_per_s']}/s), "
          f"{r['produced_per_s']}/s reached the brokers (log end offsets)")
    for m in r["per_minute"]:
        print(f"  minute {m['minute']:>3}: produced {m['produced_per_s']:>6}/s, committed {m['committed_per_s']:>6}/s")
    print("\n".join("  " + line for line in soak.timeline))
    print("\n== invariants")
    for g in GUARANTEES:
        print(f"{g}: {json.dumps(report[g])}")
    print("payments by the contract (tests/cluster/recoveries.py; late_*: recovered although the order came in its "
          "window, and allowed; false: violations):")
    for g in GUARANTEES:
        figures = report[g]
        assert isinstance(figures, dict)
        print(f"  {g}: " + ", ".join(f"{kind} {n:,}" for kind, n in figures.get("classes", {}).items()))
    print(f"delivery reports (0 expected): {json.dumps(report.get('delivery_reports'))}")
    print(f"not ready (s; a process away by the schedule counts): {json.dumps(report['not_ready_s'])}")
    print(f"lag: refresh age max {report['lag_refresh_age_max_s']} s, slowest scrape {report['lag_scrape_max_s']} s; "
          "older than 10 s: " + (", ".join(f"{clock(e['from_s'])}-{clock(e['to_s'])} (up to {e['age_max_s']} s)"
                                           for e in stale) or "never"))
    print("\n".join(f"BROKEN: {b}" for b in broken) or "every invariant holds")
    print("\n== memory: RSS (MB) at the end of each minute (q: fault-free, F: a fault, M: a member left or came "
          "back; *: a new process since the minute before)")
    print("\n".join(table(samples, minutes, soak.marks, lambda s: f"{s.rss_mb:.0f}", SAMPLE_S)))
    print("\njoin state entries (pending + buffered + remembered) / partitions held, at the same points")
    print("\n".join(table([s for s in samples if s.state is not None], minutes, soak.marks,
                          lambda s: f"{s.state}/{s.partitions}", SAMPLE_S)))
    print(f"\nmemory verdict (tests/cluster/memory.py): calm points (before a fault or at the end, nothing in the "
          f"{CALM_S:.0f} s before: {', '.join(clock(p) for p in points) or 'none'}); the baseline is RSS at the "
          f"first after a process's warm-up ({warm_up:.0f} s: ORDER_TIMEOUT + GRACE + LATE_HORIZON + 10 s) and one "
          "fault of each kind; the floor, its lowest RSS from the second-to-last calm point (the last, with two) to "
          "its last sample, must not rise above the baseline by more than the limit:")
    print("\n".join("  " + (j if isinstance(j, str) else j.line()) for j in judged))


if __name__ == "__main__":
    sys.exit(main())
