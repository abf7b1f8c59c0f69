"""The native core (slipguard_native.Core, native/src/core.rs) held to the Python one
(streams/join/core.py, the reference) on the same records: the same decisions in the same
order, the same counts, the same state after every step, the same changelog records byte
for byte at every commit, and the same behaviour after both are rebuilt from that
changelog.

The timing of the records comes from tests/join/test_property.py's scenarios (disorder,
duplicates, second payments, orders before, inside, on the edge of and after the window,
fast clocks, forgeries, time advancing at random points); each record is then dressed
at random: its user, amount text and currency matching or not, metadata of every kind,
paid_at with an offset, microseconds and a skew, signed with the current key, the
previous one or forged, a traceparent or none, and written as producers write JSON
(escapes, spaces, key order, explicit nulls). A record the native decoder is unsure of
goes in as the model's fields, as the pipeline does, and so do some it is sure of.
"""

from __future__ import annotations

import random
import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import Order, Payment
from streams.join import changelog
from streams.join.core import Decisions, JoinParams, PartitionJoin
from streams.join.native import NATIVE, order_fields, payment_fields
from tests.factories import order
from tests.join.harness import BASE, G, H, T, at
from tests.join.test_property import Ev, scenarios
from tests.join.twins import native_decisions, python_decisions, python_state
from tests.schemas.test_fast import _texts, metadata, offsets

pytestmark = pytest.mark.skipif(NATIVE is None, reason="slipguard_native not built (no cargo)")

KEY = b"native-differential-hmac-key-32b"
PREVIOUS = b"the-previous-hmac-key-of-32bytes"
TRACES = [b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", b"t" * 255]


# ---------------------------------------------------------------- records


@st.composite
def _payment(draw: st.DrawFn, e: Ev) -> bytes:
    paid_at = at(e.ts) + timedelta(milliseconds=draw(st.sampled_from([0, 0, 0, 0, T, T + 1, -T, -T - 1, 2 * H])),
                                   microseconds=draw(st.sampled_from([0, 0, 1, 999])))
    if draw(st.booleans()):
        paid_at = paid_at.astimezone(draw(offsets))
    p = Payment(payment_id=e.pid, order_id=e.oid, user_id=draw(st.sampled_from(["u1", "u1", "u1", "u2", "U-2:x.y"])),
                amount=Decimal(draw(st.sampled_from(["10.50", "10.50", "10.5", "10.51", "1E+1", "0.0001"]))),
                currency=draw(st.sampled_from(["CNY", "CNY", "CNY", "USD"])), status=e.status, paid_at=paid_at,
                metadata=draw(st.none() | metadata))
    key = draw(st.sampled_from([KEY, KEY, KEY, PREVIOUS]))
    sig = "0" * 64 if e.forged else p.expected_signature(key)
    p = p.model_copy(update={"signature": draw(st.sampled_from([sig, sig, sig, None])) if e.forged else sig})
    raw = draw(st.sampled_from(_texts(p, random.Random(draw(st.integers(0, 9))))))
    return _lower_case_t(raw) if draw(st.integers(0, 9)) == 0 else raw


@st.composite
def _order(draw: st.DrawFn, e: Ev) -> bytes:
    created_at = at(e.ts) + timedelta(microseconds=draw(st.sampled_from([0, 0, 1, 999])))
    if draw(st.booleans()):
        created_at = created_at.astimezone(draw(offsets))
    o = Order(order_id=e.oid, user_id=draw(st.sampled_from(["u1", "u1", "u1", "u3"])),
              amount=Decimal(draw(st.sampled_from(["10.50", "10.50", "10.500", "10.5", "9.99"]))),
              currency=draw(st.sampled_from(["CNY", "CNY", "CNY", "EUR"])), created_at=created_at,
              metadata=draw(st.none() | metadata))
    raw = draw(st.sampled_from(_texts(o, random.Random(draw(st.integers(0, 9))))))
    return _lower_case_t(raw) if draw(st.integers(0, 9)) == 0 else raw


@st.composite
def streams(draw: st.DrawFn) -> list[Any]:
    """Scenario steps with each record dressed: ("pay" | "order", ts, raw, trace, via_fields),
    or ("advance", payments_at_end, orders_at_end, now)."""
    out: list[Any] = []
    for s in draw(scenarios()):
        if isinstance(s, tuple):
            out.append(s)
            if draw(st.integers(0, 5)) == 0:  # the late horizon's edge of what this advance recovers
                out.append((*s[:3], s[3] + H + draw(st.sampled_from([-1, 0]))))
            continue
        raw = draw(_payment(s) if s.kind == "pay" else _order(s))
        trace = draw(st.sampled_from([None, None, *TRACES]))
        out.append((s.kind, s.ts, raw, trace, draw(st.integers(0, 4)) == 0))
    return out


# ---------------------------------------------------------------- the two cores, side by side


class Twins:
    def __init__(self, keys: tuple[bytes, ...]) -> None:
        self.keys = keys
        self.py = PartitionJoin(JoinParams(T, G, H, keys))
        self.nat = NATIVE.Core(T, G, H, list(keys))
        self.unsure = self.sure = 0

    def step(self, s: tuple) -> None:
        out = Decisions()
        if s[0] == "advance":
            _, payments_at_end, orders_at_end, now = s
            self.py.advance(now, payments_at_end, orders_at_end, out)
            self.nat.advance(now, payments_at_end, orders_at_end)
        else:
            kind, ts, raw, trace, via_fields = s
            if kind == "pay":
                p = Payment.decode(raw)
                self.py.on_payment(ts, p, raw, out, trace)
                sure = not via_fields and self.nat.on_payment(ts, raw, trace)
                if not sure:
                    self.nat.on_payment_fields(ts, payment_fields(p), raw, trace)
            else:
                o = Order.decode(raw)
                self.py.on_order(ts, o, raw, out, trace)
                sure = not via_fields and self.nat.on_order(ts, raw, trace)
                if not sure:
                    self.nat.on_order_fields(ts, order_fields(o), raw, trace)
            self.sure += sure
            self.unsure += not sure and not via_fields
        decisions, counts = self.nat.take_decisions()
        assert native_decisions(decisions) == python_decisions(out), s
        assert counts == (out.matched, out.duplicates, out.ignored_failed), s
        assert self.nat.oldest_pending_time() == self.py.oldest_pending_time()
        assert self.nat.timer_count() == len(self.py.deadlines)
        assert self.nat.sizes() == self.py.sizes()
        assert self.nat.state() == python_state(self.py)

    def commit(self, log: dict[bytes, bytes | None]) -> None:
        want = [changelog.encode(c) for c in self.py.state.take_changes()]
        got = self.nat.take_changes()
        assert got == want, "the same changelog records, byte for byte, in the same order"
        log.update(want)

    def restore(self, log: dict[bytes, bytes | None], now: int) -> None:
        """Both rebuilt from the compacted changelog, in the order a restore reads it."""
        latest = {k: v for k, v in log.items() if v is not None}
        self.py = PartitionJoin(JoinParams(T, G, H, self.keys))
        changelog.restore_into(self.py, latest, now)
        self.nat = NATIVE.Core(T, G, H, list(self.keys))
        self.nat.restore(list(latest.items()), now)
        assert self.nat.state() == python_state(self.py)
        assert self.nat.sizes() == self.py.sizes()
        assert self.nat.oldest_pending_time() == self.py.oldest_pending_time()
        assert self.nat.timer_count() == len(self.py.deadlines)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(streams(), st.sampled_from([(KEY, PREVIOUS), (KEY,), ()]), st.randoms(use_true_random=False))
def test_the_native_core_decides_stores_and_restores_as_the_python_core(steps: list, keys: tuple[bytes, ...],
                                                                          rnd: random.Random) -> None:
    twins = Twins(keys)
    log: dict[bytes, bytes | None] = {}
    now = BASE
    for s in steps:
        twins.step(s)
        if s[0] == "advance":
            now = s[3]
        r = rnd.random()
        if r < 0.3:
            twins.commit(log)
        if r < 0.08:
            twins.restore(log, now)
    twins.commit(log)
    twins.restore(log, now)


def _lower_case_t(raw: bytes) -> bytes:
    """The time written with a lower-case "t" (RFC 3339 allows it; the native decoder leaves it to the model)."""
    return re.sub(rb'("(?:paid|created)_at": ?"[0-9]{4}-[0-9]{2}-[0-9]{2})T', rb"\1t", raw)


def test_records_the_native_decoder_is_unsure_of_go_in_as_the_models_fields() -> None:
    """The fallback path: a time with a lower-case t is left to the model natively, then
    handed over as the model's fields and decided the same."""
    twins = Twins((KEY,))
    p = Payment(payment_id="p1", order_id="o1", user_id="u1", amount=Decimal("10.50"), currency="CNY",
                status="succeeded", paid_at=at(BASE))
    raw = _lower_case_t(p.model_copy(update={"signature": p.expected_signature(KEY)}).encode())
    assert b"t12:00" in raw and Payment.decode(raw).paid_at == at(BASE)
    assert not NATIVE.Core(T, G, H, [KEY]).on_payment(BASE, raw, None), "left to the model"
    twins.step(("pay", BASE, raw, None, False))
    assert twins.unsure == 1
    twins.step(("advance", True, True, BASE + T + G))
    assert twins.nat.sizes() == (0, 0, 1)


def test_native_objects_made_in_one_thread_are_used_in_another() -> None:
    """A worker is built in one thread and run in another (an application embedding the
    join; `slipguard bench`'s live phase; librdkafka's rebalance callbacks run in the
    thread that consumes): the native classes are not bound to the thread that made them."""
    import threading

    from streams.join import native
    from streams.settings import load_settings
    from tests.factories import payment
    from tests.join.fuzz import Recorder

    s = load_settings(bootstrap_servers="127.0.0.1:1")
    params = JoinParams(T, G, H)
    pipe = native.NativePipeline(s, params, Recorder())
    core = native.new_core(params)
    raw = payment(order_id="o-thread", paid_at=at(BASE)).encode()
    got: list[object] = []

    def elsewhere() -> None:
        try:
            assert core.on_payment(BASE, raw, None), "the native decoder is sure of it"
            pipe.install({0: core})
            got.append((pipe.partitions(), pipe.pending_count()))
        except BaseException as exc:  # noqa: BLE001 (a PanicException is a BaseException)
            got.append(exc)

    t = threading.Thread(target=elsewhere)
    t.start()
    t.join(10)
    assert got == [([0], 1)], got
    assert pipe.pending_count() == 1 and pipe.partitions() == [0], "and back in the thread that made them"



def _valid_changelog() -> list[tuple[bytes, bytes]]:
    """Every kind of changelog value the join writes: pending (packed, traced or not), orders,
    recovered payments, a bundle of matched pairs, a bundle of settled pairs."""
    from tests.join.harness import Harness

    h = Harness(twin=False)
    h.pay(BASE, oid="pend", trace=TRACES[0])
    h.pay(BASE, oid="plain")
    h.order(BASE + 5, oid="lonely", trace=TRACES[0])
    h.pay(BASE, oid="pair")
    h.order(BASE + 1, oid="pair")
    h.pay(BASE - 10 * T, oid="rec", trace=TRACES[0])
    h.pay(BASE - 10 * T, oid="settled")
    h.order(BASE - 10 * T + 1, oid="settled")
    h.advance(BASE - 8 * T, True, True)
    assert "settled" in h.join.settled
    return [(k, v) for k, v in (changelog.encode(c) for c in h.commit()) if v is not None]


@st.composite
def crafted(draw: st.DrawFn) -> list[tuple[bytes, bytes | None]]:
    """Changelog values as someone with write access to the changelog might craft them: valid
    ones cut short, with flag bytes flipped, times at the extremes, bytes overwritten, or junk."""
    out: list[tuple[bytes, bytes | None]] = []
    for key, value in _valid_changelog():
        how = draw(st.sampled_from(["keep", "cut", "flag", "time", "byte", "junk", "none"]))
        v = bytearray(value)
        if how == "cut":
            v = v[:draw(st.integers(0, len(v)))]
        elif how == "flag" and len(v) > 8:
            v[8] = draw(st.integers(0, 255))
        elif how == "time" and len(v) >= 8:
            t = draw(st.sampled_from([2**63 - 1, -(2**63), 2**53 + 1, -1, 0]))
            v[:8] = t.to_bytes(8, "big", signed=True)
        elif how == "byte" and v:
            v[draw(st.integers(0, len(v) - 1))] = draw(st.integers(0, 255))
        elif how == "junk":
            v = bytearray(draw(st.binary(max_size=64)))
        out.append((key, None if how == "none" else bytes(v)))
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crafted())
def test_a_crafted_changelog_is_refused_with_an_error_or_restored_and_never_panics_later(latest: list) -> None:
    """The native core takes what it can vouch for and refuses the rest with a ValueError at
    restore; nothing it takes may fail afterwards (a panic is a BaseException no worker catches)."""
    core = NATIVE.Core(T, G, H, [])
    try:
        core.restore(latest, BASE)
    except ValueError:
        return
    for now in (BASE, BASE + T + G + 1, BASE + 100 * H):
        core.advance(now, True, True)
        core.take_decisions()
        core.take_changes()
        core.state()
        core.oldest_pending_time()
    core.on_order(BASE + 2, order(order_id="pend", created_at=at(BASE + 2)).encode(), None)
    core.take_decisions()


def test_settled_pairs_give_their_memory_back_after_a_burst() -> None:
    """A burst of pairs settled, then forgotten while later ones are kept: the deque and the
    hash table of settled.rs shrink (they kept the burst's capacity, about 71 B a pair)."""
    from streams.join import native
    from streams.tools.bench import _pairs

    burst, steady = 20_000, 100
    pairs = _pairs(burst + steady, 6)
    c = native.new_core(JoinParams(T, G, H))
    for ts, o, pay in pairs[:burst]:
        c.on_order(ts, o, None)
        c.on_payment(ts + 1, pay, None)
    last = pairs[burst - 1][0]
    c.advance(last + T + G + 2, True, True)  # the burst settles
    for ts, o, pay in pairs[burst:]:  # later pairs, settled while the burst is kept
        c.on_order(ts + 10 * T, o, None)
        c.on_payment(ts + 10 * T + 1, pay, None)
    c.advance(last + 12 * T, True, True)
    c.take_decisions()
    c.take_changes()
    assert c.settled_capacity()[0] == burst + steady
    for i in range(2):  # the payments' records the horizon past the burst (settled pairs go by them)
        tick = Payment.decode(pairs[-1][2]).model_copy(update={"status": "failed", "payment_id": f"tick{i}"})
        c.on_payment(last + T + G + 2 + H, tick.encode(), None)
    c.advance(last + T + G + 2 + H, True, True)  # the burst forgotten, the later ones kept
    entries, deque_capacity, table_capacity = c.settled_capacity()
    assert entries == steady and deque_capacity <= 4 * steady and table_capacity <= 4 * steady
