"""The join core against a small reference model of the contract, on random interleavings.

Streams are built as a producer would write them: each record is appended around its
event time with less than GRACE/2 of disorder; the consumer interleaves the two
partitions at random and time advances at random points. The reference model states
the contract directly (scan everything consumed so far), with none of the core's
indexes, timers or expiry.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.join import compact
from tests.join.harness import BASE, G, Harness, T

KEY = b"property-test-hmac-key-32-bytes!"


@dataclass(frozen=True)
class Ev:
    kind: str  # "pay" | "order"
    oid: str
    ts: int
    pid: str = ""
    status: str = "succeeded"
    forged: bool = False  # a payment whose signature does not verify


@st.composite
def scenarios(draw):
    payments: list[tuple[int, Ev]] = []
    orders: list[tuple[int, Ev]] = []
    n = draw(st.integers(1, 12))
    jitter = st.integers(0, G // 2 - 1)
    for i in range(n):
        oid = f"o{i}"
        t = BASE + draw(st.integers(0, 4 * T))
        status = draw(st.sampled_from(["succeeded", "succeeded", "succeeded", "failed"]))
        payments.append((t + draw(jitter), Ev("pay", oid, t, f"p{i}", status)))
        if draw(st.booleans()):  # a redelivered duplicate
            payments.append((t + draw(jitter) + draw(st.integers(0, G // 2)), Ev("pay", oid, t, f"p{i}", status)))
        if draw(st.integers(0, 4)) == 0:  # a second, distinct payment
            t2 = t + draw(st.integers(0, T))
            payments.append((t2 + draw(jitter), Ev("pay", oid, t2, f"p{i}-second")))
        shape = draw(st.sampled_from(["missing", "inside", "inside", "after", "before", "edge"]))
        if shape != "missing":
            offset = {
                "inside": draw(st.integers(-T, T)),
                "after": T + draw(st.integers(1, 3 * T)),
                "before": -T - draw(st.integers(1, T)),
                "edge": draw(st.sampled_from([-T - 1, -T, T, T + 1])),
            }[shape]
            o = Ev("order", oid, t + offset)
            orders.append((o.ts + draw(jitter), o))
            if draw(st.integers(0, 5)) == 0:
                orders.append((o.ts + draw(jitter) + G // 2, o))  # the order event published twice
        if draw(st.integers(0, 5)) == 0:  # a producer with a wrong clock: an order stamped far ahead
            skew = Ev("order", f"skew{i}", t + draw(st.integers(10 * T, 30 * T)))
            orders.append((t + draw(jitter), skew))
        if draw(st.integers(0, 5)) == 0:  # a forged payment (for this order or another), perhaps stamped ahead
            forged_ts = t + draw(st.sampled_from([0, T, 20 * T]))
            forged = Ev("pay", draw(st.sampled_from([oid, f"forged{i}"])), forged_ts, f"f{i}", forged=True)
            payments.append((t + draw(jitter), forged))
        if draw(st.integers(0, 2)) == 0:  # another order that moves order time right onto this timeout edge
            tick = Ev("order", f"tick{i}", t + T + G - draw(st.integers(0, 1)))
            orders.append((tick.ts, tick))
    # Records are appended to their partitions in production order (the sort key), which
    # for wrong clocks and forgeries is far from their timestamps.
    ps = [e for _, e in sorted(payments, key=lambda x: x[0])]
    os = [e for _, e in sorted(orders, key=lambda x: x[0])]
    # Interleave the two partitions at random, with time advancing at random points, often
    # exactly on a timeout edge (one millisecond before, on).
    edges = [e.ts + T + G + d for e in ps for d in (-1, 0)]
    nows = st.one_of(st.integers(BASE, BASE + 8 * T), st.sampled_from(edges))
    steps: list[object] = []
    i = j = 0
    while i < len(ps) or j < len(os):
        take_payment = j >= len(os) or (i < len(ps) and draw(st.booleans()))
        if take_payment:
            steps.append(ps[i])
            i += 1
        else:
            steps.append(os[j])
            j += 1
        if draw(st.integers(0, 3)) == 0:
            steps.append(("advance", i == len(ps), j == len(os), draw(nows)))
    steps.append(("advance", True, True, BASE + 100 * T))
    return steps


class Reference:
    """The contract, read literally: matched iff an order in the window is read before the timeout."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[str, int]] = {}
        self.state: dict[str, str] = {}
        self.orders_read: dict[str, list[int]] = {}
        self.orders_seen: list[int] = []  # every order record's time, in the order read
        self.recovered: list[str] = []
        self.matched = 0
        self.steps = 0
        self.when: list[tuple[int, str]] = []

    def step(self, s) -> None:
        self.steps += 1
        if isinstance(s, tuple):
            _, _payments_at_end, orders_at_end, now = s
            # Progress of the orders partition: the wall clock once read to its end, else the
            # largest time two consecutive order records both reach, but never past the wall clock.
            pairs = pairwise(self.orders_seen)  # (first, second), (second, third), ...
            confirmed = max((min(a, b) for a, b in pairs), default=-1)
            progress = now if orders_at_end else min(confirmed, now)
            for oid, (pid, t) in self.first.items():
                if self.state[oid] == "pending" and t + T + G <= progress:
                    self.state[oid] = "recovered"
                    self.recovered.append(pid)
                    self.when.append((self.steps, pid))
            return
        if s.kind == "order":
            self.orders_seen.append(s.ts)
            self.orders_read.setdefault(s.oid, []).append(s.ts)
            if self.state.get(s.oid) == "pending":
                self._try_match(s.oid)
            return
        if s.forged or s.status != "succeeded" or s.oid in self.first:  # forgeries count for nothing
            return
        self.first[s.oid] = (s.pid, s.ts)
        self.state[s.oid] = "pending"
        self._try_match(s.oid)

    def _try_match(self, oid: str) -> None:
        _, t = self.first[oid]
        if any(t - T <= ts <= t + T for ts in self.orders_read.get(oid, [])):
            self.state[oid] = "matched"
            self.matched += 1


def _apply(h: Harness, s) -> None:
    """One scenario step on the core: an advance of time, a payment or an order."""
    if isinstance(s, tuple):
        _, payments_at_end, orders_at_end, now = s
        h.advance(now, payments_at_end, orders_at_end)
        h.join.oldest_pending_time()  # as the worker's gauge after each commit (it prunes timer buckets)
    elif s.kind == "pay":
        h.pay(s.ts, oid=s.oid, pid=s.pid, status=s.status, forged=s.forged)
    else:
        h.order(s.ts, oid=s.oid)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_core_recovers_exactly_what_the_contract_says(steps) -> None:
    h = Harness(key=KEY)
    ref = Reference()
    recovered: list[str] = []
    when: list[tuple[int, str]] = []
    matched = 0
    for n, s in enumerate(steps, start=1):
        ref.step(s)
        _apply(h, s)
        out = h.take()
        recovered += [r.payment.payment_id for r in out.recoveries]
        when += [(n, r.payment.payment_id) for r in out.recoveries]
        matched += out.matched

    assert sorted(recovered) == sorted(ref.recovered)
    assert sorted(when) == sorted(ref.when), "each recovery is decided at the same step as the contract says"
    assert max(Counter(recovered).values(), default=1) == 1, "recovered at most once"
    matched_ids = {ref.first[o][0] for o, st_ in ref.state.items() if st_ == "matched"}
    assert not matched_ids & set(recovered), "no payment both matched and recovered"
    assert matched == ref.matched
    # Once time has passed, every first succeeded payment is matched or recovered; none waits.
    assert all(state != "pending" for state in ref.state.values())
    assert h.join.sizes()[0] == 0
    recovered_orders = [pid.removesuffix("-second").removeprefix("p") for pid in recovered]
    assert len(recovered_orders) == len(set(recovered_orders)), "one recovery per order, never for a second payment"


def _state(join) -> tuple:
    return (
        {oid: (compact.t_of(e), compact.flags_of(e) & ~compact.PERSISTED, compact.part_of(e), compact.trace_of(e))
         for oid, e in join.pending.items()},
        {oid: (e.ts, e.paid_id) for oid, e in join.orders.items()},
        {oid: (e.payment_id, e.deadline, e.late) for oid, e in join.recovered.items()},
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.data())
def test_state_restored_from_the_changelog_equals_the_live_state_at_every_commit(steps, data) -> None:
    """Commit at random points; after each, a core rebuilt from the compacted log equals the live one."""
    from streams.join import changelog
    from streams.join.core import JoinParams, PartitionJoin

    h = Harness(key=KEY)
    log: dict[bytes, bytes | None] = {}
    for s in steps:
        _apply(h, s)
        h.take()
        if data.draw(st.integers(0, 3)) == 0:
            for change in h.commit():
                key, value = changelog.encode(change)
                log[key] = value
            compacted = {k: v for k, v in log.items() if v is not None}
            restored = PartitionJoin(JoinParams(T, G, 3_600_000, (KEY,)))
            changelog.restore_into(restored, compacted)
            # Orders are compared while within their window: past it, an entry may linger in
            # memory behind an older one (expiry goes in insertion order) or in a bundle that
            # still holds a live pair, and it no longer decides anything.
            window = T + G
            live = _state(h.join)
            got = _state(restored)
            assert got[0] == live[0] and got[2] == live[2]
            assert all(compact.flags_of(e) & compact.PERSISTED for e in restored.pending.values())
            assert all(restored.deadlines.holds(oid, compact.t_of(e))
                       for oid, e in restored.pending.items()), "each has a timer"
            current = {k: v for k, v in live[1].items()
                       if h.join.orders[k].expires_at(window) > max(h.join.payments.time, h.join.payments_progress)}
            assert {k: got[1].get(k) for k in current} == current
