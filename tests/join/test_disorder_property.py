"""Honest traffic delivered in disorder, against the contract's "Join semantics".

Several producers write each partition; one of them may be held up (a broker kill, a
network cut) and deliver what it buffered at once when it is back, so records land in
their partition behind records stamped up to D ms later (D up to a few times the
timeout, but bounded), on the payments side, the orders side, or both. The traffic is
honest: each payment has its order inside the window, or none, or one stamped past the
deadline (late); no duplicates (a duplicate payment delivered late is a known gap:
test_payment_disorder.py's xfail).

The worker reads what has been appended by its wall clock, lagging at random, and
advances time with that clock; a partition counts as read to its end when everything
appended by then has been read. The oracle is the contract's, computed from the arrival
sequence alone: a payment is recovered when, at an advance, no order inside its window
has arrived and the orders partition's progress (the largest time two consecutive
orders read both reach, never past the wall clock; the wall clock once read to the end)
has reached its deadline + GRACE. An order that arrives only after that (behind records
that already confirmed past it: "late by disorder"), or one stamped past the deadline,
is a late order, reported once. Both cores run (the Harness drives the native twin and
holds it to the Python core).

With `copies`, some payments are produced again, 0.25-2.5 s after the first: the same
payment (a second produce of it: same payment_id) or a second distinct one for the same
order (payment_id + "b"), each going its own way (another producer, held up or not), as
in soak-88769. The first of an order's payments read is its payment; a later one with
its payment_id is dropped, one with another is a `duplicate_payment` anomaly, reported
once, never recovered, whenever it lands (the late horizon is far beyond these scenarios).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.join.harness import BASE, G, H, Harness, T

LAG = 20  # an undisturbed producer's record is appended within this many ms of its stamp


@dataclass(frozen=True)
class Rec:
    kind: str  # "pay" | "order"
    oid: str
    ts: int  # event time (the producer's stamp)
    append: int  # wall-clock time it lands in its partition
    seq: int  # production order, to break ties
    pid: str = ""


@dataclass
class Scenario:
    payments: list[Rec]  # in partition (append) order
    orders: list[Rec]
    steps: list[tuple]  # ("read", Rec) | ("advance", now, payments_at_end, orders_at_end)
    disorder: int = 0  # D
    params: tuple[int, int, int] = (T, G, H)  # timeout, grace, late horizon
    kinds: dict[str, str] = field(default_factory=dict)  # oid -> inside | missing | late


@st.composite
def _partition(draw: st.DrawFn, records: list[tuple[str, str, int, str]], disorder: int, first_seq: int) -> list[Rec]:
    """Records of one partition from three producers, the first two of them held up for
    up to `disorder` ms at a time: what they produced meanwhile lands when they are back."""
    outages: list[tuple[int, int, int]] = []  # (producer, start, end)
    for _ in range(draw(st.integers(1, 4)) if records else 0):
        # around a record's stamp, so that it is caught (with others, or alone)
        start = draw(st.sampled_from(records))[2] - draw(st.integers(0, disorder // 2))
        outages.append((draw(st.integers(0, 1)), start, start + draw(st.integers(disorder // 2, disorder))))
    out: list[Rec] = []
    for n, (kind, oid, ts, pid) in enumerate(records):
        if n and records[n - 1] == records[n]:  # the same record again: a producer's retry, right behind it
            out.append(Rec(kind, oid, ts, out[-1].append + draw(st.integers(0, LAG)), first_seq + n, pid))
            continue
        producer = draw(st.sampled_from([0, 0, 1, 2]))  # 2 is never held up
        append = ts + draw(st.integers(0, LAG))
        for who, start, end in outages:
            if who == producer and start <= ts < end:
                append = max(append, end + draw(st.integers(0, LAG)))
        out.append(Rec(kind, oid, ts, append, first_seq + n, pid))
    return sorted(out, key=lambda r: (r.append, r.seq))


@st.composite
def scenarios(draw: st.DrawFn, dups: bool = False, copies: bool = False, backlog: bool = False) -> Scenario:
    """`dups`: some records are written twice, the copy right behind the first (a
    producer's retry). `copies`: some payments are produced again, 0.25-2.5 s later, the
    same payment or a second distinct one for the order (see the module's docstring).
    `backlog`: the worker was down while the records were appended, and reads them (at the
    same pace) with its wall clock 2 to 3 late horizons ahead of them: a partition is at
    its end only once every record of it is read."""
    # The defaults, or the soak's settings (ORDER_TIMEOUT 5 s, GRACE 1 s, LATE_HORIZON 5 min).
    timeout, grace, horizon = params = draw(st.sampled_from([(T, G, H), (5_000, 1_000, 300_000)]))
    outage = draw(st.integers(2 * horizon, 3 * horizon)) if backlog else 0
    disorder = draw(st.sampled_from([grace, timeout // 2, timeout, 2 * timeout, 3 * timeout]))
    span = draw(st.sampled_from([2 * timeout, 4 * timeout, 6 * timeout]))
    pays: list[tuple[str, str, int, str]] = []
    ords: list[tuple[str, str, int, str]] = []
    kinds: dict[str, str] = {}
    for i in range(draw(st.integers(1, 24))):
        oid, t = f"o{i}", BASE + draw(st.integers(0, span))
        kind = kinds[oid] = draw(st.sampled_from(["inside"] * 5 + ["missing", "late"]))
        pays += [("pay", oid, t, f"p{i}")] * (2 if dups and draw(st.integers(0, 5)) == 0 else 1)
        if copies and draw(st.integers(0, 2)) == 0:
            second = draw(st.booleans())
            pays.append(("pay", oid, t + draw(st.integers(250, 2_500)), f"p{i}b" if second else f"p{i}"))
        if kind != "missing":
            ts = t + (draw(st.integers(-timeout, timeout)) if kind == "inside"
                      else timeout + draw(st.integers(1, 2 * timeout)))
            ords += [("order", oid, ts, "")] * (2 if dups and draw(st.integers(0, 5)) == 0 else 1)
    # Producers stamp in the order they produce: sort by stamp before assigning appends.
    pays.sort(key=lambda r: r[2])
    ords.sort(key=lambda r: r[2])
    side = draw(st.sampled_from(["payments", "orders", "both"]))
    p_disorder = disorder if side in ("payments", "both") else 0
    o_disorder = disorder if side in ("orders", "both") else 0
    payments = draw(_partition(pays, max(p_disorder, 1), 0)) if p_disorder else _steady(pays, 0)
    orders = draw(_partition(ords, max(o_disorder, 1), len(pays))) if o_disorder else _steady(ords, len(pays))
    # The worker: its wall clock moves on in steps; at each it reads some of what has been
    # appended by then (it may lag), both partitions interleaved at random, then advances.
    steps: list[tuple] = []
    last = max((r.append for r in payments + orders), default=BASE)
    now = BASE - timeout
    i = j = 0
    edges = sorted({t + timeout + grace + d for _, _, t, _ in pays for d in (-1, 0)})
    while i < len(payments) or j < len(orders):
        if draw(st.integers(0, 4)) == 0:
            later = [e for e in edges if e > now]
            now = later[0] if later else now + 1
        else:
            now += draw(st.integers(1, timeout // 2))
        can_p = sum(1 for r in payments[i:] if r.append <= now)
        can_o = sum(1 for r in orders[j:] if r.append <= now)
        lagging = now <= last + timeout and draw(st.integers(0, 3)) == 0  # then it catches up
        take_p = draw(st.integers(0, can_p)) if lagging else can_p
        take_o = draw(st.integers(0, can_o)) if lagging else can_o
        i, j = _interleave(draw, steps, payments, orders, i, j, take_p, take_o)
        p_end = all(r.append > now + outage for r in payments[i:])
        o_end = all(r.append > now + outage for r in orders[j:])
        steps.append(("advance", now + outage, p_end, o_end))
    steps.append(("advance", max(now, last) + 2 * (timeout + grace) + outage, True, True))
    return Scenario(payments, orders, steps, disorder, params, kinds)


def _interleave(draw: st.DrawFn, steps: list[tuple], payments: list[Rec], orders: list[Rec], i: int, j: int,
                take_p: int, take_o: int) -> tuple[int, int]:
    """Read `take_p` payments from `i` and `take_o` orders from `j` into `steps`, in a drawn
    interleaving (each partition in its own order): the next (i, j)."""
    while take_p or take_o:
        if take_o == 0 or (take_p and draw(st.booleans())):
            steps.append(("read", payments[i]))
            i, take_p = i + 1, take_p - 1
        else:
            steps.append(("read", orders[j]))
            j, take_o = j + 1, take_o - 1
    return i, j


def _steady(records: list[tuple[str, str, int, str]], first_seq: int) -> list[Rec]:
    return [Rec(kind, oid, ts, ts, first_seq + n, pid) for n, (kind, oid, ts, pid) in enumerate(records)]


class Oracle:
    """The contract, from the arrival sequence: what must be recovered, and when; what
    must be reported late."""

    def __init__(self, timeout: int, grace: int) -> None:
        self.timeout, self.grace = timeout, grace
        self.pay: dict[str, tuple[str, int]] = {}  # oid -> (payment_id, event time), once read
        self.order: dict[str, int] = {}  # oid -> its order's event time, once read
        self.state: dict[str, str] = {}  # oid -> pending | matched | recovered
        self.orders_seen: list[int] = []
        self.recovered: list[tuple[int, str]] = []  # (step, payment_id)
        self.seconds: list[str] = []  # orders of second distinct payments read: one anomaly each
        self.late: set[str] = set()  # orders that must be reported late
        self.progress_at: list[int] = []  # the orders' progress at each step (-1 at reads)

    def step(self, n: int, s: tuple) -> None:
        if s[0] == "advance":
            _, now, _, orders_at_end = s
            confirmed = max((min(a, b) for a, b in pairwise(self.orders_seen)), default=-1)
            progress = now if orders_at_end else min(confirmed, now)
            for oid, (pid, t) in self.pay.items():
                if self.state[oid] == "pending" and t + self.timeout + self.grace <= progress:
                    self.state[oid] = "recovered"
                    self.recovered.append((n, pid))
                    if self.order.get(oid, -1) > t + self.timeout:
                        self.late.add(oid)  # stamped past the deadline, read while it waited
                    # (one stamped before its window is no late order: its payment's copy, stamped
                    # later, was read first and set the window)
            self.progress_at.append(progress)
            return
        self.progress_at.append(-1)
        r: Rec = s[1]
        if r.kind == "order":
            self.orders_seen.append(r.ts)
            if r.oid in self.order:
                return  # the same order again: the first one stands
            self.order[r.oid] = r.ts
            if r.oid in self.pay:
                self._settle(r.oid)
            return
        if r.oid in self.pay:
            if r.pid != self.pay[r.oid][0]:
                self.seconds.append(r.oid)  # a second distinct payment: an anomaly, not a recovery
            return  # the same payment again: dropped
        self.pay[r.oid] = (r.pid, r.ts)
        self.state[r.oid] = "pending"
        if r.oid in self.order:
            self._settle(r.oid)

    def _settle(self, oid: str) -> None:
        """The payment and its order have both arrived: matched if the order is inside the
        window and the payment was not recovered first; else the order is late."""
        t, ts, timeout = self.pay[oid][1], self.order[oid], self.timeout
        if self.state[oid] == "pending" and t - timeout <= ts <= t + timeout:
            self.state[oid] = "matched"
        elif ts > t + timeout or self.state[oid] == "recovered":
            self.late.add(oid)


def _run(sc: Scenario) -> None:
    timeout, grace, horizon = sc.params
    h = Harness(timeout, grace, horizon)
    oracle = Oracle(timeout, grace)
    recovered: list[tuple[int, str]] = []
    late: list[str] = []
    anomalies: list[tuple[str, str]] = []
    matched = 0
    arrived: dict[str, int] = {}  # oid -> step its order was read
    for n, s in enumerate(sc.steps):
        oracle.step(n, s)
        if s[0] == "advance":
            _, now, p_end, o_end = s
            h.advance(now, p_end, o_end)
            h.join.oldest_pending_time()
        elif s[1].kind == "pay":
            h.pay(s[1].ts, oid=s[1].oid, pid=s[1].pid)
        else:
            h.order(s[1].ts, oid=s[1].oid)
            arrived.setdefault(s[1].oid, n)
        out = h.take()
        recovered += [(n, r.payment.payment_id) for r in out.recoveries]
        late += [x.order.order_id for x in out.late]
        anomalies += [(f.kind, f.order_id) for f in out.anomalies]
        matched += out.matched

    pids = {pid: oid for oid, (pid, _) in oracle.pay.items()}
    # No false recovery: recovered only where the orders' progress had reached its deadline
    # + GRACE and no order inside its window had arrived by then.
    for n, pid in recovered:
        oid = pids.get(pid)
        assert oid is not None, f"{pid} recovered: it is a duplicate or a second payment, not an order's payment"
        t = oracle.pay[oid][1]
        assert oracle.progress_at[n] >= t + timeout + grace, f"{pid} recovered before the orders' progress reached it"
        ts = oracle.order.get(oid)
        inside = ts is not None and t - timeout <= ts <= t + timeout
        assert not (inside and arrived[oid] < n), f"{pid} recovered although its order (in its window) had arrived"
    # No missing recovery, and each at the step the contract says.
    assert Counter(p for _, p in recovered) == Counter(p for _, p in oracle.recovered), "recovered once each"
    assert sorted(recovered) == sorted(oracle.recovered), "recovered at the step the contract says"
    assert all(state != "pending" for state in oracle.state.values())
    # Every late order reported, each once, and no other.
    assert Counter(late) == Counter(oracle.late), "late orders: each reported once, and only those"
    assert matched == sum(1 for state in oracle.state.values() if state == "matched")
    # Each second distinct payment reported once; nothing else is an anomaly.
    assert Counter(anomalies) == Counter(("duplicate_payment", oid) for oid in oracle.seconds), "anomalies"


CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=300, deadline=None, suppress_health_check=CHECKS)
@given(scenarios())
def test_disordered_honest_traffic_is_joined_as_the_contract_says(sc: Scenario) -> None:
    _run(sc)


@settings(max_examples=150, deadline=None, suppress_health_check=CHECKS)
@given(scenarios(dups=True))
def test_records_written_twice_in_a_row_change_nothing_in_disorder(sc: Scenario) -> None:
    """A producer's retry: the copy lands right behind the first. (A copy going its own
    way: the next test.)"""
    _run(sc)


@settings(max_examples=300, deadline=None, suppress_health_check=CHECKS)
@given(scenarios(dups=True, copies=True))
def test_duplicates_and_second_payments_from_held_up_producers_are_dropped_or_reported_never_recovered(
        sc: Scenario) -> None:
    """soak-88769's 6 false recoveries: a payment's duplicate, or a second payment for its
    order, produced 0.25-2.5 s later and landing behind payments past the pair's window
    (one producer held up), was taken for a new payment and recovered."""
    _run(sc)


@settings(max_examples=150, deadline=None, suppress_health_check=CHECKS)
@given(scenarios(dups=True, copies=True, backlog=True))
def test_the_same_read_in_a_backlog_older_than_the_late_horizon(sc: Scenario) -> None:
    """After an outage longer than LATE_HORIZON: matched pairs settle and unmatched orders
    are kept by the payments partition's progress, not the wall clock (which is the horizon
    past them all: nothing was kept, and duplicates, second payments and payments landing
    behind their order's window were recovered)."""
    _run(sc)
