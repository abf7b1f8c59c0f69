"""One fault test's run on the cluster: the join under both guarantees, the writer, the lag
exporter and live traffic, as real processes (tests/integration/workers.py), then one check.

Both guarantees run at once, under the same fault: an `exactly_once` group and an
`at_least_once` group, each on its own payments and orders topics with its own traffic
(distinct payment ids), both writing to one set of output topics, which one writer puts
into one PostgreSQL schema. The groups' names are chosen so that both hash to the same
`__consumer_offsets` partition: one broker is both groups' coordinator, so killing it hits
both. Half the cost of running each test twice, and the same fault for both."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from schemas import LateOrder, Recovery, recovery_id_for
from streams.kafka.topics import create_topics
from streams.settings import Settings
from tests.cluster.cluster import ROOT, Cluster
from tests.cluster.deliveries import Deliveries, Segment, place, seed_of
from tests.cluster.invariants import (
    Guarantee,
    Observed,
    Outages,
    Poller,
    Recovered,
    by_contract,
    figures,
    violations,
)
from tests.cluster.recoveries import Classified, classify
from tests.integration.test_join import TIMEOUT_MS, _LiveTraffic, _owned
from tests.integration.test_lag import _free_port
from tests.integration.test_recover import writer_settings
from tests.integration.workers import committed_total, read_to_end, start

GUARANTEES = ("exactly_once", "at_least_once")

REPORTS = ROOT / ".stack" / "cluster" / "reports"
OWN_LINES = 60  # a failed check prints this many of each process's last lines of its own


def _own_lines(log: str, n: int = OWN_LINES) -> str:
    """A process's last `n` lines that are not librdkafka's (which start with "%" and
    flood a log during a fault: the 1,500 characters printed before held 8 of its own)."""
    own = [line for line in log.splitlines() if not line.startswith("%")]
    return "\n".join(own[-n:])


def java_hash(text: str) -> int:
    """Java's String.hashCode, which places a group on a `__consumer_offsets` partition."""
    h = 0
    for unit in text.encode("utf-16-be").hex(" ", 2).split():
        h = (31 * h + int(unit, 16)) & 0xFFFFFFFF
    return h


def offsets_partition(group: str, partitions: int = 10) -> int:
    """Kafka's: Utils.abs(groupId.hashCode()) % partitions (Math.abs, and 0 for MIN_VALUE)."""
    h = java_hash(group)
    h = h - (1 << 32) if h >= 1 << 31 else h
    return (0 if h == -(1 << 31) else abs(h)) % partitions


@dataclass
class Verdict:
    report: dict[str, object]  # the figures, the facts and the violations
    broken: list[str]  # the violations, one line each
    invented: list[str]  # payment ids recovered that had their order
    path: Path  # where the report was written


class Run:
    def __init__(self, cluster: Cluster, base: Settings, tmp_path: Path, name: str, *, seed: int) -> None:
        self.cluster, self.tmp, self.name, self.seed = cluster, tmp_path, name, seed
        eos = writer_settings(base).derive(commit_interval="200ms", processing_guarantee="exactly_once")
        assert eos.order_timeout == TIMEOUT_MS
        prefix = eos.join_group.removesuffix("-join")
        alos_prefix = next(f"{prefix}a{n}" for n in range(1000)
                           if offsets_partition(f"{prefix}a{n}-join") == offsets_partition(eos.join_group))
        alos = eos.derive(payments_topic=f"{alos_prefix}.payments", orders_topic=f"{alos_prefix}.orders",
                          join_group=f"{alos_prefix}-join", processing_guarantee="at_least_once")
        create_topics(alos)
        self.settings = {"exactly_once": eos, "at_least_once": alos}
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}
        self.traffic: dict[str, list[_LiveTraffic]] = {g: [] for g in GUARANTEES}  # consecutive segments
        self.seeds: dict[str, set[int]] = {g: set() for g in GUARANTEES}  # their plans' (payment ids p<seed>-<i>)
        self.segments: dict[str, list[Segment]] = {g: [] for g in GUARANTEES}  # where their orders landed
        self.poller = Poller()
        self.started = time.monotonic()
        self.free_port: Callable[[], int] = _free_port  # each process's metrics port

    # ------------------------------------------------------------ processes
    def log_path(self, name: str) -> Path:
        return self.tmp / f"{name.replace('/', '-')}.log"

    def _start(self, name: str, s: Settings, command: list[str], **over: object) -> str:
        port = self.free_port()
        log = self.log_path(name)
        self.procs[name] = (start(s, command, log, metrics_port=port, **over), log)
        self.poller.watch(name, port) if command[0] != "lag" else setattr(self.poller, "exporter", port)
        return name

    def worker(self, guarantee: str, name: str, *, proxy_set: int | None = None) -> str:
        """A join worker; with `proxy_set`, it bootstraps from that set of proxies alone."""
        over: dict[str, object] = {"instance_id": name}
        if proxy_set is not None:
            over["bootstrap_servers"] = self.cluster.sets[proxy_set]
        return self._start(f"{guarantee}/{name}", self.settings[guarantee], ["join"], **over)

    def writer(self, name: str = "writer") -> str:
        return self._start(name, self.settings["exactly_once"], ["recover"])

    def exporter(self) -> str:
        eos, alos = self.settings["exactly_once"], self.settings["at_least_once"]
        args = ["lag", "--serve", "--interval", "0.5"]
        for g in (eos.join_group, alos.join_group, eos.recover_group):
            args += ["--group", g]
        for t in (eos.payments_topic, eos.orders_topic, alos.payments_topic, alos.orders_topic, eos.recovery_topic,
                  eos.late_topic):
            args += ["--topic", t]
        return self._start("exporter", eos, args)

    def everything(self, workers: tuple[str, ...] = ("w1",)) -> None:
        """Per guarantee the named workers, the writer and the exporter; ready."""
        for g in GUARANTEES:
            for w in workers:
                self.worker(g, w)
        self.writer()
        self.exporter()
        self.wait_ready()

    def log(self, name: str) -> str:
        return self.procs[name][1].read_text() if self.procs[name][1].exists() else ""

    def owned(self, name: str) -> list[int]:
        """The partitions a join worker holds now, by its log (restored, revoked, lost)."""
        return _owned(self.procs[name][1]) or []

    def ready(self, name: str) -> bool:
        readings = self.poller.readiness.get(name, [])
        return bool(readings) and readings[-1][1] == 200

    def wait_ready(self, names: list[str] | None = None, timeout: float = 90) -> None:
        names = names or [n for n in self.procs if n != "exporter"]
        self.wait(lambda: all(self.ready(n) for n in names), f"{names} ready", timeout)

    def wait(self, condition, what: str, timeout: float = 90) -> float:
        started = time.monotonic()
        while not condition():
            for name, (proc, _log) in self.procs.items():
                assert proc.poll() is None, f"{name} exited ({proc.returncode}) while waiting until {what}:\n" + \
                    self.log(name)[-3000:]
            assert time.monotonic() - started < timeout, f"timed out after {timeout}s waiting until {what}"
            time.sleep(0.2)
        return time.monotonic() - started

    # ------------------------------------------------------------ traffic
    def start_traffic(self, seconds: float, per_second: int = 300) -> None:
        """Live traffic for each group: `per_second` orders' worth of payments and orders
        (a segment; segments follow one another, each of its own order ids)."""
        for i, g in enumerate(GUARANTEES):
            seed = self.seed + 2 * len(self.traffic[g]) + i
            self.seeds[g].add(seed)
            count = int(seconds * per_second)
            deliveries = Deliveries(self.settings[g].orders_topic, count)
            t = _LiveTraffic(self.settings[g], count, seed=seed, seconds=seconds, on_delivery=deliveries)
            self.traffic[g].append(t)
            self.segments[g].append(Segment(seed, t.start_ms, t.spacing_ms, deliveries))

    def traffic_running(self) -> bool:
        return any(t.running() for segments in self.traffic.values() for t in segments)

    def total(self, guarantee: str) -> int:
        return sum(t.total for t in self.traffic[guarantee])

    def progress(self, guarantee: str) -> int:
        s = self.settings[guarantee]
        return committed_total(s, s.join_group, [s.payments_topic, s.orders_topic], s.partitions) or 0

    def wait_progress(self, fraction: float, timeout: float = 90) -> None:
        for g in self.traffic:
            self.wait(lambda g=g: self.progress(g) >= fraction * self.total(g), f"{g} at {fraction:.0%}", timeout)

    # ------------------------------------------------------------ the check
    def expected(self) -> list[Guarantee]:
        """Per group, what its plans make due (the contract may make more due: judge)."""
        return [Guarantee(g, self.settings[g].join_group,
                          {pid: "o" + pid[1:] for t in segments for pid in t.exp.recovered},
                          {o for t in segments for o in t.exp.late}, once=g == "exactly_once")
                for g, segments in self.traffic.items()]

    def classify(self, seen: Observed) -> tuple[dict[str, Classified], dict[str, dict[str, int]]]:
        """Each group's recovered payments by the contract (tests/cluster/recoveries.py),
        their orders placed by the traffic's delivery reports; and per group what the
        reports could not say (records of the orders partitions looked at that no report
        accounts for, reports of failed deliveries or not recorded: 0 expected)."""
        first: dict[str, int] = {}  # payment id -> its first recovery's detected_at
        for r in seen.recoveries:
            first[r.payment_id] = min(first.get(r.payment_id, r.recovered_at_ms), r.recovered_at_ms)
        out, notes = {}, {}
        for g, segments in self.traffic.items():
            mine = {pid: at for pid, at in first.items() if seed_of(pid) in self.seeds[g]}
            planned = {pid: "o" + pid[1:] for t in segments for pid in t.exp.recovered}
            s = self.settings[g]
            placed = place(self.segments[g], set(mine) - set(planned), s.order_timeout)
            out[g] = classify(planned, {o for t in segments for o in t.exp.late},
                              sum(t.exp.matched for t in segments), mine, placed.orders, s.grace)
            notes[g] = {"orders_records_unaccounted": placed.unseen,
                        "order_reports_failed": sum(x.deliveries.failed for x in self.segments[g])}
        return out, notes

    def finish(self, timeout: float = 180) -> None:
        """Traffic produced, every input committed by its group, every recovery written."""
        for segments in self.traffic.values():
            for t in segments:
                t.join()
        # Each expected row, not a count of rows: false recoveries' rows would make up for
        # missing ones, and the check would read the topics before the last came.
        want = {oid for g in self.expected() for oid in g.recovered.values()}
        try:
            for g in self.traffic:
                self.wait(lambda g=g: self.progress(g) >= self.total(g), f"{g} committed all {self.total(g)} inputs",
                          timeout)
            self.wait(lambda: self._rows() >= len(want) and want <= self._recovered_orders(),
                      f"{len(want)} recovered rows written", timeout)
        except AssertionError as exc:  # a run that never finishes is judged too: what is missing, and where
            self.check(timed_out=str(exc).splitlines()[0])
            raise
        time.sleep(2)  # anything more the writer would write

    def _db(self) -> psycopg.Connection:
        return psycopg.connect(self.settings["exactly_once"].database_url.get_secret_value(), autocommit=True)

    def _rows(self) -> int:
        with self._db() as conn:
            return conn.execute("SELECT count(*) FROM orders WHERE source = 'recovery'").fetchone()[0]

    def _recovered_orders(self) -> set[str]:
        with self._db() as conn:
            return {r[0] for r in conn.execute("SELECT order_id FROM orders WHERE source = 'recovery'")}

    def observe(self) -> Observed:
        s = self.settings["exactly_once"]
        expected = self.expected()
        seen = Observed()
        for value in read_to_end(s, s.recovery_topic, sum(len(g.recovered) for g in expected), 60, 1.0):
            r = Recovery.decode(value)
            seen.recoveries.append(Recovered(r.payment.payment_id, r.order_id,
                                             (r.detected_at - r.deadline).total_seconds(),
                                             round(r.detected_at.timestamp() * 1000)))
        seen.late = [LateOrder.decode(v).order_id
                     for v in read_to_end(s, s.late_topic, sum(len(g.late) for g in expected), 30, 0.5)]
        with self._db() as conn:
            seen.rows.update(dict(conn.execute(
                "SELECT order_id, count(*) FROM orders WHERE source = 'recovery' GROUP BY 1").fetchall()))
            seen.written.update(dict(conn.execute(
                "SELECT recovery_id::text, count(*) FROM recovery_audit WHERE outcome <> 'rejected' GROUP BY 1")))
            seen.outcomes.update(dict(conn.execute("SELECT outcome, count(*) FROM recovery_audit GROUP BY 1")))
            seen.reconciled = {r[0] for r in conn.execute(
                "SELECT order_id FROM orders WHERE reconciled_at IS NOT NULL")}
        seen.exited = {name: proc.poll() for name, (proc, _log) in self.procs.items()}
        self.poller.stop()
        seen.readiness, seen.lag = self.poller.readiness, self.poller.lag
        return seen

    def judge(self, outages: Outages | None = None, **facts: object) -> Verdict:
        """The invariants, after finish(); the figures, with `facts` of the fault, go to
        .stack/cluster/reports/<name>.json."""
        seen = self.observe()
        classified, notes = self.classify(seen)
        expected = [by_contract(g, classified[g.name]) for g in self.expected()]
        ids = {pid: str(recovery_id_for(pid)) for g in expected for pid in g.recovered}
        broken = violations(expected, seen, outages=outages, recovery_ids=ids)
        report = {"test": self.name, "seconds": round(time.monotonic() - self.started, 1), **facts,
                  **figures(expected, seen), "delivery_reports": notes, "violations": broken}
        invented = sorted({r.payment_id for r in seen.recoveries} - set(ids))
        if invented:
            report["false_recoveries"] = self.forensics(invented[:20])
            report["false_by_contract"] = {g: [c.false[pid] for pid in sorted(c.false)[:100]]
                                           for g, c in classified.items() if c.false}
        REPORTS.mkdir(parents=True, exist_ok=True)
        path = REPORTS / f"{self.name}.json"
        path.write_text(json.dumps(report, indent=2, default=str))
        return Verdict(report, broken, invented, path)

    def check(self, outages: Outages | None = None, **facts: object) -> dict[str, object]:
        """The invariants, after finish(), as a test's assertion; the figures are returned
        (and written, see judge)."""
        verdict = self.judge(outages, **facts)
        print(json.dumps(verdict.report, default=str))
        if verdict.broken:  # the logs kept beside the report, and each process's own lines in the output
            kept = REPORTS / f"{self.name}-logs"
            kept.mkdir(parents=True, exist_ok=True)
            for _proc, path in self.procs.values():
                if path.exists():
                    shutil.copy(path, kept / path.name)
        tails = "".join(f"\n---- {n} (its own lines; every line in {REPORTS}) ----\n{_own_lines(self.log(n))}"
                        for n in self.procs)
        assert not verdict.broken, "\n".join(verdict.broken) + tails
        return verdict.report

    def _delete_topics(self) -> None:
        """The run's topics go (a node restarted later restarts faster with fewer logs)."""
        admin = self.cluster.admin(self.settings["exactly_once"])
        prefixes = tuple(s.join_group.removesuffix("-join") + "." for s in self.settings.values()) + \
            tuple(s.join_group + "-" for s in self.settings.values())
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefixes)]
        for future in admin.delete_topics(topics, operation_timeout=30).values() if topics else ():
            future.result(timeout=60)

    def forensics(self, payment_ids: list[str]) -> list[dict[str, object]]:
        """Where false recoveries and their orders are: each recovery's partition, offset,
        deadline and detection, and its order's partition, offset and timestamp."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from streams.kafka import config

        wanted = {pid: {"payment_id": pid} for pid in payment_ids}
        by_order = {"o" + pid[1:]: pid for pid in payment_ids}
        s = self.settings["exactly_once"]
        c = Consumer(config.consumer(s, f"forensics-{self.seed}"))
        try:
            for topic in [s.recovery_topic] + [t for x in self.settings.values()
                                               for t in (x.orders_topic, x.payments_topic)]:
                parts = c.list_topics(topic, timeout=10).topics[topic].partitions
                c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
                idle = 0
                while idle < 3:
                    batch = c.consume(5000, timeout=1)
                    idle = idle + 1 if not batch else 0
                    for m in batch:
                        if m.error() is not None or m.key() is None:
                            continue
                        oid = m.key().decode()
                        if oid not in by_order:
                            continue
                        entry = wanted[by_order[oid]]
                        where = {"partition": m.partition(), "offset": m.offset(), "timestamp_ms": m.timestamp()[1]}
                        if topic == s.recovery_topic:  # (the groups share it)
                            r = Recovery.decode(m.value())
                            entry.setdefault("recoveries", []).append(
                                where | {"deadline": str(r.deadline), "detected_at": str(r.detected_at)})
                        else:
                            entry.setdefault(topic, []).append(where)
        finally:
            c.close()
        return list(wanted.values())

    def close(self, *, clean: bool) -> None:
        """Stops everything (SIGTERM); with `clean`, each must have stopped cleanly (exit 0)."""
        self.poller.stop()
        for segments in self.traffic.values():
            for t in segments:
                t.halt.set()
        codes = {}
        for proc, _log in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, (proc, _log) in self.procs.items():
            try:
                codes[name] = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(10)
        if clean:  # (a failed run's topics are kept, to look at)
            self._delete_topics()
        if clean:
            bad = {n: c for n, c in codes.items() if c != 0}
            assert not bad, f"not stopped cleanly: {bad}" + "".join(f"\n---- {n} ----\n{self.log(n)[-2000:]}"
                                                                   for n in bad)
