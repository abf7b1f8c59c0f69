"""The one invariant checker of the fault tests, and the observers that feed it.

`observe` gathers what the run left (the recovery and late topics as read_committed
readers see them, the rows in PostgreSQL, the processes) and the observers gathered what
happened during it (each worker's /readyz, the lag exporter's series); `violations` holds
them to the contract and returns what is broken, one line each; `figures` says what an
operator would have seen. What is due is the plan's, and, by the contract's progress rule,
the recoveries of orders that came in their window but late (`by_contract`, from
tests/cluster/recoveries.py). Every fault test ends with `assert not violations(...)`; the
checker is pure, so tests/cluster/test_checker.py shows it catching each broken invariant.
"""

from __future__ import annotations

import http.client
import itertools
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field, replace

from tests.cluster.recoveries import Classified

#: once a fault is over, how fresh the exporter's lag must be again, and how long a
#: refresh may fail in a row during a partial fault (one broker of three away) before the
#: series count as broken
LAG_FRESH_S = 5.0
LAG_GAP_MAX_S = 30.0


@dataclass
class Guarantee:
    """What one join group must have done: its expected recoveries (payment id -> order
    id) and late orders, and whether each recovery must appear exactly once. By the
    contract (tests/cluster/recoveries.py) the expected include, beyond the plan's, the
    recoveries of payments whose order came in its window but late by the contract's
    progress (with their late orders); `false` holds the evidence of each false recovery
    classified, `classes` how many payments of each kind there were."""

    name: str
    group: str  # its consumer group
    recovered: dict[str, str]
    late: set[str]
    once: bool
    false: dict[str, str] = field(default_factory=dict)  # payment id -> why its recovery is false
    classes: dict[str, int] | None = None


def by_contract(planned: Guarantee, classified: Classified) -> Guarantee:
    """What the contract makes due, from what the plan does: also the recoveries it allows
    of payments whose order came in their window (late by disorder, or in flight), each
    once under exactly_once, its order on orders.late and its row reconciled; the false
    ones with their evidence, and the count of each kind."""
    return replace(planned, recovered=planned.recovered | classified.also_recovered,
                   late=planned.late | set(classified.also_recovered.values()),
                   false=planned.false | classified.false, classes=dict(classified.counts))


@dataclass
class Recovered:
    payment_id: str
    order_id: str
    lateness_s: float  # detected_at - deadline
    recovered_at_ms: int = 0  # detected_at: the worker's wall clock when it decided


@dataclass
class Observed:
    recoveries: list[Recovered] = field(default_factory=list)
    late: list[str] = field(default_factory=list)  # order ids on orders.late
    rows: Counter[str] = field(default_factory=Counter)  # order id -> rows recovered into orders
    written: Counter[str] = field(default_factory=Counter)  # recovery id -> written audit rows (not rejected)
    outcomes: Counter[str] = field(default_factory=Counter)
    reconciled: set[str] = field(default_factory=set)  # order ids reconciled with their late order
    exited: dict[str, int | None] = field(default_factory=dict)  # process -> exit code (None: running)
    readiness: dict[str, list[tuple[float, int | None]]] = field(default_factory=dict)  # process -> (t, status)
    lag: list[Scrape] = field(default_factory=list)


@dataclass
class Scrape:
    t: float
    status: int | None  # None: no answer
    series: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (group, topic, partition) -> committed
    ends: dict[tuple[str, str, str], float] = field(default_factory=dict)  # -> log end offset
    age: float | None = None  # slipguard_lag_refresh_age_seconds
    took: float = 0.0  # how long the exporter took to answer


Outages = dict[str, tuple[float, float] | list[tuple[float, float]]]  # one (start, end), or several


def violations(expected: list[Guarantee], seen: Observed, *, outages: Outages | None = None,
               recovery_ids: dict[str, str] | None = None) -> list[str]:
    """Every broken invariant, one line each (empty: all hold).

    `outages`: process -> (start, end) of each real outage for it (monotonic times): it
    must say not ready during each, and ready after. `recovery_ids`: payment id -> recovery id,
    to check the audit rows by the id the writer keys them by."""
    out: list[str] = []
    counts = Counter(r.payment_id for r in seen.recoveries)
    everything = {pid for g in expected for pid in g.recovered}
    invented = set(counts) - everything
    if invented:
        why = {pid: w for g in expected for pid, w in g.false.items()}
        out.append(f"false recovery: {len(invented)} payments recovered that the contract does not allow, e.g. "
                   + "; ".join(why.get(pid, pid) for pid in sorted(invented)[:3]))
    for g in expected:
        lost = set(g.recovered) - set(counts)
        if lost:
            out.append(f"{g.name}: {len(lost)} due recoveries missing, e.g. {sorted(lost)[:3]}")
        doubled = {pid: counts[pid] for pid in g.recovered if counts[pid] > 1}
        if g.once and doubled:
            out.append(f"{g.name}: {len(doubled)} recoveries appear more than once to read_committed readers, "
                       f"e.g. {sorted(doubled.items())[:3]}")
        missing_late = g.late - set(seen.late)
        if missing_late:
            out.append(f"{g.name}: {len(missing_late)} late orders not on orders.late, e.g. {sorted(missing_late)[:3]}")
    invented_late = set(seen.late) - {o for g in expected for o in g.late}
    if invented_late:
        out.append(f"{len(invented_late)} orders reported late that were not, e.g. {sorted(invented_late)[:3]}")
    out += _rows(expected, seen, recovery_ids)
    out += [f"{name} is down (exit {code})" for name, code in sorted(seen.exited.items()) if code is not None]
    out += _readiness(seen, outages or {})
    out += _lag(seen)
    return out


def _rows(expected: list[Guarantee], seen: Observed, recovery_ids: dict[str, str] | None) -> list[str]:
    out = []
    orders = {oid for g in expected for oid in g.recovered.values()}
    if set(seen.rows) != orders:
        out.append(f"PostgreSQL: {len(orders - set(seen.rows))} recovered orders without a row, "
                   f"{len(set(seen.rows) - orders)} rows for orders that were not missing")
    doubled = {oid: n for oid, n in seen.rows.items() if n != 1}
    if doubled:
        out.append(f"PostgreSQL: {len(doubled)} orders written more than once, e.g. {sorted(doubled.items())[:3]}")
    if recovery_ids is not None:
        want = {recovery_ids[pid] for g in expected for pid in g.recovered}
        if set(seen.written) != want or any(n != 1 for n in seen.written.values()):
            out.append(f"PostgreSQL: audit rows for {len(seen.written)} recoveries "
                       f"({sum(seen.written.values())} rows), expected one for each of {len(want)}")
    if set(seen.outcomes) - {"inserted"}:
        out.append(f"PostgreSQL: outcomes {dict(seen.outcomes)}, expected every recovery inserted")
    late = {o for g in expected for o in g.late}
    if seen.reconciled != late:
        out.append(f"PostgreSQL: {len(late - seen.reconciled)} late orders not reconciled, "
                   f"{len(seen.reconciled - late)} rows reconciled that had no late order")
    return out


def _readiness(seen: Observed, outages: Outages) -> list[str]:
    out = []
    for name, readings in sorted(seen.readiness.items()):
        if not readings or readings[-1][1] != 200:
            out.append(f"{name} is not ready at the end (last /readyz: {readings[-1][1] if readings else 'none'})")
        spans = outages.get(name, [])
        for start, end in [spans] if isinstance(spans, tuple) else spans:
            if not any(code != 200 for t, code in readings if start <= t <= end + 5):
                out.append(f"{name} said it was ready all through its outage at t={start:.1f}")
            if not any(code == 200 for t, code in readings if t > end):
                out.append(f"{name} never ready again after its outage at t={start:.1f}")
    return out


def _lag(seen: Observed) -> list[str]:
    if not seen.lag:
        return ["the lag exporter was never scraped"]
    out = []
    since = next((i for i, s in enumerate(seen.lag) if s.status == 200), len(seen.lag))  # (it was starting before)
    unanswered = [s for s in seen.lag[since:] if s.status != 200]
    if unanswered:
        out.append(f"the lag exporter did not answer {len(unanswered)} of {len(seen.lag) - since} scrapes")
    known: set[tuple[str, str, str]] = set()
    for s in seen.lag:
        if s.status != 200:
            continue
        gone = known - set(s.series)
        if gone:
            out.append(f"lag series vanished at t={s.t:.1f}: {sorted(gone)[:3]}")
            break
        known |= set(s.series)
    if not known:
        out.append("the lag exporter exported no committed offsets")
    ages = [s.age for s in seen.lag if s.age is not None]
    if ages and max(ages) > LAG_GAP_MAX_S:
        out.append(f"lag went unrefreshed for {max(ages):.1f}s (more than {LAG_GAP_MAX_S:.0f}s)")
    if not ages or ages[-1] < 0 or ages[-1] > LAG_FRESH_S:
        out.append(f"lag not fresh at the end (refresh age {ages[-1] if ages else None})")
    return out


# ------------------------------------------------------------------ figures


def figures(expected: list[Guarantee], seen: Observed) -> dict[str, object]:
    """What an operator would have seen: per group, recoveries' lateness past their
    deadline, duplicates, the longest stop of a partition's committed offset while it had
    lag, and its payments by kind (Guarantee.classes); per process, seconds not ready; the
    exporter's longest refresh gap."""
    out: dict[str, object] = {}
    for g in expected:
        mine = [r for r in seen.recoveries if r.payment_id in g.recovered]
        late = sorted(r.lateness_s for r in mine)
        stops = longest_stops(seen.lag, g.group)
        out[g.name] = {
            "recoveries": len(mine), "duplicates": len(mine) - len({r.payment_id for r in mine}),
            "lateness_p50_s": round(statistics.median(late), 2) if late else None,
            "lateness_max_s": round(late[-1], 2) if late else None,
            "longest_partition_stop_s": round(max(stops.values()), 1) if stops else None,
        } | ({"classes": g.classes} if g.classes is not None else {})
    out["not_ready_s"] = {name: round(_not_ready_seconds(readings), 1)
                          for name, readings in sorted(seen.readiness.items())}
    ages = [s.age for s in seen.lag if s.age is not None]
    out["lag_refresh_age_max_s"] = round(max(ages), 1) if ages else None
    out["lag_scrape_max_s"] = round(max((s.took for s in seen.lag), default=0.0), 2)
    return out


def longest_stops(scrapes: list[Scrape], group: str) -> dict[tuple[str, str, str], float]:
    """Per partition the group reads: the longest time its committed offset stood still
    while the log had records past it (at the exporter's resolution)."""
    moved: dict[tuple[str, str, str], tuple[float, float]] = {}  # series -> (since, value)
    longest: dict[tuple[str, str, str], float] = {}
    for s in scrapes:
        for key, value in s.series.items():
            if key[0] != group:
                continue
            since, last = moved.get(key, (s.t, value))
            behind = s.ends.get(key, value) > value
            if value != last or not behind:
                moved[key] = (s.t, value)
            else:
                moved[key] = (since, last)
                longest[key] = max(longest.get(key, 0.0), s.t - since)
    return longest


def _not_ready_seconds(readings: list[tuple[float, int | None]]) -> float:
    """Seconds not ready once it had been ready (its start is not an outage)."""
    since = next((i for i, r in enumerate(readings) if r[1] == 200), len(readings))
    return sum(b[0] - a[0] for a, b in itertools.pairwise(readings[since:]) if a[1] != 200)


# ------------------------------------------------------------------ observers


def http_get(port: int, path: str, timeout: float = 10) -> tuple[int | None, str]:
    """(status, body); None: no answer within `timeout` (Prometheus' own default scrape
    timeout is 10 s), or one cut short (a process stopping while it answers: the soak's
    poller thread died of an IncompleteRead once, and with it every later reading)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, exc.read().decode()
        except (OSError, http.client.HTTPException):
            return exc.code, ""
    except (OSError, http.client.HTTPException):
        return None, ""


class Poller:
    """Every `every` seconds in the background: each process's /readyz (`ports`: name ->
    metrics port, added to as processes start) and the lag exporter's /metrics."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.ports, self.exporter = every, {}, None
        self.readiness: dict[str, list[tuple[float, int | None]]] = {}
        self.lag: list[Scrape] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)
        self._thread.start()

    def watch(self, name: str, port: int) -> None:
        self.ports[name] = port

    def _run(self) -> None:
        while not self._done.is_set():
            for name, port in list(self.ports.items()):
                self.readiness.setdefault(name, []).append((time.monotonic(), http_get(port, "/readyz")[0]))
            if self.exporter is not None:
                self.lag.append(scrape(self.exporter))
            self._done.wait(self.every)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(10)


def scrape(port: int) -> Scrape:
    at = time.monotonic()
    status, text = http_get(port, "/metrics")
    s = Scrape(at, status, took=time.monotonic() - at)
    for line in text.splitlines():
        if line.startswith(("slipguard_consumer_committed_offset{", "slipguard_log_end_offset{")):
            labels, value = line.rsplit(" ", 1)
            pairs = dict(p.split("=", 1) for p in labels[labels.index("{") + 1:-1].split(","))
            key = (pairs["group"].strip('"'), pairs["topic"].strip('"'), pairs["partition"].strip('"'))
            (s.series if line.startswith("slipguard_consumer") else s.ends)[key] = float(value)
        elif line.startswith("slipguard_lag_refresh_age_seconds "):
            s.age = float(line.rsplit(" ", 1)[1])
    return s
