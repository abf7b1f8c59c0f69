"""The soak's memory watch (tests/cluster/soak.py): each process's RSS, partitions and join
state sampled over the run, a table of them at the end of each minute, and a verdict on
growth.

How growth is judged. With steady traffic the join's state is bounded by its windows:
pending payments by ORDER_TIMEOUT + GRACE, recovered payments remembered by LATE_HORIZON
after their recovery. Faults add bursts the windows do not bound but the clients' own
limits do: a stalled worker's consumer prefetches up to librdkafka's
queued.max.messages.kbytes (64 MiB), its producer buffers what a slow broker does not
take, a restore reads a partition's whole state; and allocators keep what a burst took
(RSS stays at its high-water mark). So a process's memory is expected to rise during the
first faults of each kind and then stand; a leak goes on rising.

The verdict, per process incarnation (one pid): RSS is read at calm points (just before
each fault, and at the end of the traffic, when nothing happened for CALM_S before: no
fault, no membership change). The baseline is its first calm reading once it has lived
through its warm-up (ORDER_TIMEOUT + GRACE + LATE_HORIZON: the state's bound reached) and
through one fault of each kind the run deals (each burst's bound reached). The end is
judged by a floor: the lowest RSS sampled over its final stretch, from its second-to-last
calm point to its last sample (from its last calm point when it has only two: the
baseline's own point would make the floor the baseline). It grows if the floor rose above
the baseline by more than GROWTH_MB_MIN and GROWTH_SHARE of the baseline, unless it held
more partitions at the floor than at the baseline (more partitions, more state). An
incarnation without two such readings is not judged (a short run, or a process restarted
late): the verdict says so rather than pass it.
(Calm points rather than whole fault-free minutes: on a machine where a broker takes
30 s to start, a fault, its repair and a membership change leave less than a minute of
a two-minute slot.)

Why a floor, not the last calm reading. One reading takes a burst for growth: in soak
528620, exactly_once/w1 read 192 MB at its first judged calm point (24:59), 376 MB at its
last (28:59, just after a slow broker) and 217 MB a minute later, and failed. A burst
falls back, so somewhere in the stretch the process stands near what it holds; a leak goes
on rising, so its floor is its RSS where the stretch starts, and rises with the leak. GROWS
thus needs every sample of the stretch above the limit: a leak past the limit by the
second-to-last calm point is caught whatever spikes, or dips still above it, follow; the
price is that it must get there one calm point earlier than before (a slot, two minutes
of a soak's schedule). The stretch starts at a calm point so that it always holds a calm
reading, not only what followed a fault; and at the second-to-last, not the last, because
a burst can outlast what is left of the run: w1's 217 MB a minute after its last calm
point was still 25 MB above its baseline (its limit: 19). The baseline stays one reading:
a burst there only makes the verdict lenient, by at most the burst, not wrong the other
way. A process leaves the sampler's list before the soak signals it to stop
(tests/cluster/soak.py), so its closing, as its clients free their buffers, is not taken
for its floor (but by a sample already under way then)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.cluster.invariants import http_get
from tests.cluster.schedule import clock

GROWTH_MB_MIN = 16.0
GROWTH_SHARE = 0.10
CALM_S = 30.0

STATE_GAUGES = ("slipguard_join_pending_payments", "slipguard_join_buffered_orders",
                "slipguard_join_recovered_remembered")


@dataclass(frozen=True)
class Sample:
    t: float  # seconds after the traffic started
    name: str
    pid: int
    rss_mb: float
    partitions: int | None  # partitions assigned, over its topics (its /metrics)
    state: int | None  # a join worker's state entries: pending, buffered orders, remembered recoveries


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def gauges(text: str) -> tuple[int | None, int | None]:
    """(partitions assigned, join state entries) from a worker's /metrics text."""
    partitions = state = None
    for line in text.splitlines():
        name = line.split(" ", 1)[0].split("{", 1)[0]
        if name != "slipguard_assigned_partitions" and name not in STATE_GAUGES:
            continue
        try:
            value = int(float(line.rsplit(" ", 1)[1]))
        except (ValueError, OverflowError):  # (NaN, or a line cut short)
            continue
        if name == "slipguard_assigned_partitions":
            partitions = (partitions or 0) + value
        else:
            state = (state or 0) + value
    return partitions, state


class Sampler:
    """Every `every` s in the background: `processes()` (name -> (pid, metrics port)) read
    from /proc and their /metrics."""

    def __init__(self, processes: Callable[[], dict[str, tuple[int, int | None]]], t0: float,
                 every: float = 5.0, path: Path | None = None) -> None:
        """`path`: each sample is also appended there as a JSON line as it is taken (a run
        that dies keeps them)."""
        self.processes, self.t0, self.every, self.path = processes, t0, every, path
        self.samples: list[Sample] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            for name, (pid, port) in self.processes().items():
                rss = rss_mb(pid)
                if rss is None:
                    continue
                partitions, state = gauges(http_get(port, "/metrics", timeout=3)[1]) if port else (None, None)
                sample = Sample(round(time.monotonic() - self.t0, 1), name, pid, round(rss, 1), partitions, state)
                self.samples.append(sample)
                if self.path is not None:
                    with self.path.open("a") as f:
                        f.write(json.dumps(asdict(sample)) + "\n")
            self._done.wait(self.every)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(30)


# ------------------------------------------------------------------ when to read


def calm(points: list[float], busy: list[tuple[float, float]], calm_s: float = CALM_S) -> list[float]:
    """The points no busy interval touched in the `calm_s` before them."""
    return [p for p in points if not any(a <= p and b > p - calm_s for a, b in busy)]


def at(samples: list[Sample], name: str, t: float, every: float = 5.0) -> Sample | None:
    """The process's last sample up to `t`, if it was running then."""
    mine = [s for s in samples if s.name == name and t - 2 * every < s.t <= t]
    return mine[-1] if mine else None


def table(samples: list[Sample], minutes: int, marks: dict[int, str], value: Callable[[Sample], str],
          every: float = 5.0) -> list[str]:
    """One row per process, one column per minute: `value` of its sample at the minute's
    end ('-': not running then; '*': a new incarnation since the minute before).
    `marks`: minute -> what happened in it (a fault 'F', a membership change 'M'; else 'q')."""
    names = list(dict.fromkeys(s.name for s in samples))
    width = max([len(n) for n in names] + [6])
    rows = ["minute".ljust(width) + "".join(f"{m:>8}" for m in range(1, minutes + 1)),
            "".ljust(width) + "".join(f"{marks.get(m, 'q'):>8}" for m in range(1, minutes + 1))]
    for name in names:
        cells, pid = [], None
        for m in range(1, minutes + 1):
            s = at(samples, name, 60 * m, every)
            cell = "-" if s is None else value(s) + ("*" if pid is not None and s.pid != pid else "")
            pid = s.pid if s is not None else pid
            cells.append(f"{cell:>8}")
        rows.append(name.ljust(width) + "".join(cells))
    return rows


@dataclass
class Judged:
    name: str
    pid: int
    first: Sample  # the baseline: its reading at its first calm point
    last: Sample  # its reading at its last calm point
    floor: Sample  # its lowest sample over its final stretch
    stretch: tuple[float, float]  # the final stretch: from a calm point to its last sample
    points: list[float]  # the calm points it was read at
    peak_mb: float  # its highest RSS sampled

    @property
    def rise_mb(self) -> float:
        """The floor's rise over the baseline: what is judged."""
        return self.floor.rss_mb - self.first.rss_mb

    @property
    def limit_mb(self) -> float:
        return max(GROWTH_MB_MIN, GROWTH_SHARE * self.first.rss_mb)

    @property
    def more_partitions(self) -> bool:
        return (self.floor.partitions or 0) > (self.first.partitions or 0)

    @property
    def grows(self) -> bool:
        return self.rise_mb > self.limit_mb and not self.more_partitions

    def line(self) -> str:
        verdict = "GROWS" if self.grows else "steady"
        why = " (holds more partitions)" if self.more_partitions and self.rise_mb > self.limit_mb else ""
        state = (f", state {self.first.state:,} -> {self.floor.state:,} entries"
                 if self.first.state is not None and self.floor.state is not None else "")
        when = ", ".join(clock(p) for p in self.points)
        return (f"{self.name} (pid {self.pid}): {self.first.rss_mb:.0f} MB at {clock(self.points[0])}, floor "
                f"{self.floor.rss_mb:.0f} MB at {clock(self.floor.t)} (the lowest from {clock(self.stretch[0])} to "
                f"{clock(self.stretch[1])}; {self.rise_mb:+.0f} MB, limit {self.limit_mb:.0f}){state}; last calm "
                f"reading {self.last.rss_mb:.0f} MB at {clock(self.points[-1])} (calm points {when}), "
                f"peak {self.peak_mb:.0f} MB: {verdict}{why}")


def judge(samples: list[Sample], points: list[float], warm_up: float, faults: list[tuple[float, str]],
          every: float = 5.0) -> tuple[list[Judged], list[str]]:
    """Each incarnation read at two calm points or more after its warm-up and one fault of
    each kind of `faults` ((start, kind), in the run's schedule) since it started, with its
    floor over its final stretch (the module's docstring); and a line for each that is not,
    saying why."""
    judged, not_judged = [], []
    kinds = {kind for _, kind in faults}
    for name, pid in dict.fromkeys((s.name, s.pid) for s in samples):
        mine = [s for s in samples if s.pid == pid]
        born = max(0.0, mine[0].t - every)  # (the traffic's start, for a process running before it)
        struck = {kind: min((at for at, k in faults if k == kind and at >= born), default=None) for kind in kinds}
        missing = sorted(k for k, at in struck.items() if at is None)
        since = max([born + warm_up] + [at for at in struck.values() if at is not None])
        read = [(p, s) for p in points if p >= since
                and (s := at(samples, name, p, every)) is not None and s.pid == pid]
        if len(read) >= 2 and not missing:
            start, first_of_stretch = read[-2] if len(read) > 2 else read[-1]  # (never the baseline's own point)
            stretch = [s for s in mine if s.t >= first_of_stretch.t]
            judged.append(Judged(name, pid, read[0][1], read[-1][1], min(stretch, key=lambda s: s.rss_mb),
                                 (start, stretch[-1].t), [p for p, _ in read], max(s.rss_mb for s in mine)))
        else:
            why = (f"no {', '.join(missing)} since it started" if missing
                   else f"{len(read)} calm reading(s) from {clock(since)} on, 2 needed")
            not_judged.append(f"{name} (pid {pid}, {mine[0].rss_mb:.0f} -> {mine[-1].rss_mb:.0f} MB, peak "
                              f"{max(s.rss_mb for s in mine):.0f}): not judged, {why}")
    return judged, not_judged
