"""Settled pairs: what the join keeps of a matched pair once its window has closed, so
that a duplicate of its payment, or a second payment for its order, delivered late (one
of several producers held up behind the others: soak-88769's false recoveries) is
dropped, or reported, and never recovered (the contract's "Join semantics").

A pair settles when the payments partition's progress passes its window (its order_id,
a 64-bit fingerprint of its payment_id, its window's end) and is forgotten once the
worker's clock is LATE_HORIZON past that end, as an unmatched order is (bd4240a). It
survives restores: settled bundles in the changelog (b"s:"), numbered with the matched
pairs' bundles. Every test runs both cores (the Harness's native twin, held to the
Python core call by call and commit by commit).

Same conventions as test_core.py: T = 60 s timeout, G = 5 s grace, H = 1 h horizon.
"""

from __future__ import annotations

from streams.join import changelog
from streams.join.state import Store, fingerprint
from tests.join.harness import BASE, G, H, Harness, T
from tests.join.twins import python_state

END = BASE + T + G  # the window's end of a pair at BASE (order and payment)
Log = dict[bytes, bytes | None]


def _matched(h: Harness, oid: str = "a", pid: str = "pa", at: int = BASE) -> None:
    h.order(at, oid=oid)
    h.pay(at, oid=oid, pid=pid)
    assert h.take().matched == 1


def _commit(h: Harness, log: Log) -> list[tuple[Store, object, object]]:
    shown = []
    for change in h.commit():
        key, value = changelog.encode(change)
        log[key] = value
        v = change.value
        shown.append((change.store, change.key, [e[0] for e in v] if isinstance(v, list) else v))
    return shown


def _restored(log: Log, now: int) -> Harness:
    h = Harness()
    h.restore({k: v for k, v in log.items() if v is not None}, now)
    return h


def test_a_pair_past_its_window_settles_and_is_forgotten_the_late_horizon_after_its_window_by_the_clock() -> None:
    h = Harness()
    _matched(h)
    h.advance(END - 1, payments_at_end=True, orders_at_end=True)
    assert h.join.sizes() == (0, 1, 0) and not h.join.settled
    h.advance(END, payments_at_end=True, orders_at_end=True)
    assert h.join.sizes() == (0, 0, 0) and h.join.settled == {"a": fingerprint("pa") << 64 | END}
    h.advance(END + H - 1, payments_at_end=True, orders_at_end=True)
    assert "a" in h.join.settled
    h.advance(END + H, payments_at_end=True, orders_at_end=True)
    assert not h.join.settled and not h.join.state.settled_queue


def test_payments_progress_alone_settles_and_the_clock_alone_forgets() -> None:
    """Records stamped past the window settle the pair whatever the clock; the clock far
    ahead with no record moves nothing but the forgetting."""
    h = Harness()
    _matched(h)
    for i in range(3):
        h.order(END + i, oid=f"x{i}")
        h.pay(END + i, oid=f"x{i}")
    h.advance(END + 10)  # (the wall clock at the records: payments confirm END + 1)
    assert "a" in h.join.settled
    h.advance(END + H)
    assert "a" not in h.join.settled


def test_a_pair_whose_window_is_already_the_horizon_behind_the_clock_does_not_settle() -> None:
    """A backlog read hours late: its pairs go at once, as they did before."""
    h = Harness()
    _matched(h)
    h.advance(END + H, payments_at_end=True, orders_at_end=True)
    assert h.join.sizes() == (0, 0, 0) and not h.join.settled
    assert h.commit() == []


def test_a_late_duplicate_is_dropped_a_late_second_payment_is_an_anomaly_a_late_order_again_is_a_duplicate() -> None:
    h = Harness()
    _matched(h)
    h.advance(END + 1_000, payments_at_end=True, orders_at_end=True)
    assert "a" in h.join.settled
    h.pay(BASE + 500, oid="a", pid="pa")
    out = h.take()
    assert (out.duplicates, out.anomalies, out.recoveries) == (1, [], [])
    second = h.pay(BASE + 900, oid="a", pid="pa-b")
    out = h.take()
    assert [(f.kind, f.order_id, f.payments, f.order) for f in out.anomalies] == [
        ("duplicate_payment", "a", (second,), None)]
    h.order(BASE + 10, oid="a")
    out = h.take()
    assert out.duplicates == 1 and not out.late
    h.advance(END + 10 * T, payments_at_end=True, orders_at_end=True)
    assert h.take().recoveries == [] and h.join.sizes() == (0, 0, 0), "nothing pending, nothing waiting"


def test_once_forgotten_a_payment_for_the_order_is_a_new_one() -> None:
    """State is bounded by the windows and the horizon: past it, a payment is new."""
    h = Harness()
    _matched(h)
    h.advance(END + H, payments_at_end=True, orders_at_end=True)
    h.pay(END + H, oid="a", pid="pa-much-later")
    h.advance(END + H + T + G, payments_at_end=True, orders_at_end=True)
    assert h.recovered_ids() == ["pa-much-later"]


def test_a_pair_matched_late_settles_at_the_next_advance_and_waits_behind_those_settled_before_it() -> None:
    """An unmatched order kept past its window (bd4240a) matched by a payment landing late:
    its pair is past its window at once and settles next; it is forgotten no earlier
    than its own window's end + H, and once those settled before it are."""
    h = Harness()
    h.order(BASE, oid="kept")
    _matched(h, "b", "pb", BASE + 5_000)
    h.advance(END + 5_000, payments_at_end=True, orders_at_end=True)
    assert list(h.join.settled) == ["b"] and "kept" in h.join.orders
    h.pay(BASE + 1, oid="kept", pid="pk")
    assert h.take().matched == 1
    h.advance(END + 5_001, payments_at_end=True, orders_at_end=True)
    assert list(h.join.settled) == ["b", "kept"]
    h.advance(END + H + 1, payments_at_end=True, orders_at_end=True)  # kept's own time has come, b's not
    assert list(h.join.settled) == ["b", "kept"]
    h.advance(END + H + 5_000, payments_at_end=True, orders_at_end=True)
    assert not h.join.settled


def test_settled_pairs_survive_a_restore_and_their_bundle_goes_when_all_are_forgotten() -> None:
    h, log = Harness(), {}
    _matched(h, "a", "pa", BASE)
    _matched(h, "b", "pb", BASE + 1_000)
    assert _commit(h, log) == [(Store.MATCHED, 0, ["a", "b"])]
    h.advance(END + 1_000, payments_at_end=True, orders_at_end=True)
    assert _commit(h, log) == [(Store.MATCHED, 0, None), (Store.SETTLED, 1, ["a", "b"])]
    again = _restored(log, END + 2_000)
    assert again.join.settled == h.join.settled and again.join.sizes() == (0, 0, 0)
    again.pay(BASE + 300, oid="a", pid="pa")
    again.pay(BASE + 300, oid="b", pid="pb-2")
    out = again.take()
    assert out.duplicates == 1 and [f.kind for f in out.anomalies] == ["duplicate_payment"]
    again.advance(END + H, payments_at_end=True, orders_at_end=True)
    assert list(again.join.settled) == ["b"] and _commit(again, log) == []
    again.advance(END + H + 1_000, payments_at_end=True, orders_at_end=True)
    assert not again.join.settled and _commit(again, log) == [(Store.SETTLED, 1, None)]
    assert not _restored(log, END + H + 1_000).join.settled


def test_a_restore_keeps_the_later_of_a_pair_and_its_settled_entry() -> None:
    """A pair's bundle may stay in the log after the pair settled (its bundle mates are
    still in their window): the settled entry, written later, wins; and a settled entry
    forgotten, its order matched again, gives way to the new pair."""
    h, log = Harness(), {}
    _matched(h, "a", "pa", BASE)
    _matched(h, "b", "pb", BASE + 30_000)
    _matched(h, "c", "pc", BASE + 60_000)
    _commit(h, log)
    h.advance(END + 30_000, payments_at_end=True, orders_at_end=True)
    assert _commit(h, log) == [(Store.SETTLED, 1, ["a", "b"])]  # c keeps bundle 0 in the log
    again = _restored(log, END + 30_000)
    assert list(again.join.orders) == ["c"] and list(again.join.settled) == ["a", "b"]
    # a forgotten, then a new pair for it while its settled bundle (b's too) is still in the log
    h.advance(END + H, payments_at_end=True, orders_at_end=True)
    assert list(h.join.settled) == ["b", "c"]
    _matched(h, "a", "pa-new", END + H)
    _commit(h, log)
    assert log[b"s:000000000001"] is not None
    again = _restored(log, END + H)
    assert again.join.orders["a"].paid_id == "pa-new" and list(again.join.settled) == ["b", "c"]


def test_an_order_key_restored_beside_a_stale_settled_entry_wins() -> None:
    """A settled entry forgotten, then the order again (waiting under its own key) while
    the settled bundle is still in the log: the order waits, its payment matches it."""
    h, log = Harness(), {}
    _matched(h, "a", "pa", BASE)
    _matched(h, "b", "pb", BASE + 60_000)
    _commit(h, log)
    h.advance(END, payments_at_end=True, orders_at_end=True)
    h.advance(END + 60_000, payments_at_end=True, orders_at_end=True)
    _commit(h, log)
    h.advance(END + H, payments_at_end=False, orders_at_end=False)
    assert list(h.join.settled) == ["b"]
    h.order(END + H, oid="a")
    _commit(h, log)
    again = _restored(log, END + H)
    assert "a" not in again.join.settled and again.join.orders["a"].paid_id is None
    again.pay(END + H, oid="a", pid="pa-new")
    assert again.take().matched == 1


def test_formats_2_and_3_write_no_settled_bundle() -> None:
    """A release before format 4 does not know the key: a worker writing format 2 or 3
    (SLIPGUARD_CHANGELOG_FORMAT, for a rolling upgrade or a rollback) leaves settled
    bundles out (a restore from it forgets them, as that release did)."""
    h = Harness()
    _matched(h)
    h.commit()
    h.advance(END, payments_at_end=True, orders_at_end=True)
    records = [(0, *changelog.encode(c, 2)) for c in h.commit()]
    assert [k for _, k, _ in records] == [b"m:000000000000", b"s:000000000001"]
    for fmt in (2, 3):
        assert [k for _, k, _ in changelog.written(records, fmt)] == [b"m:000000000000"]
    assert changelog.written(records, 4) == records


def test_the_explain_view_names_a_settled_order() -> None:
    h, log = Harness(), {}
    _matched(h)
    h.advance(END, payments_at_end=True, orders_at_end=True)
    _commit(h, log)
    assert [x.kind for x in changelog.held(log, "a")] == ["settled"]
    assert changelog.held(log, "other") == []


# ---------------------------------------------------------------- an entry put over one the changelog holds


def _log_is_live(h: Harness, log: Log, now: int) -> Harness:
    """A restore from the log holds what the live join holds (both cores: the Harness)."""
    again = _restored(log, now)
    assert python_state(again.join) == python_state(h.join), "the log restores another state"
    return again


def test_an_order_copy_matching_a_pending_payment_over_the_persisted_order_leaves_no_stale_key() -> None:
    """An order, committed (o:a); its payment stamped just past its window, pending ('an order
    from before the window does not match'); a copy of the order stamped inside the window
    (the order service's retry, re-stamped) matches it. The pair replaces the persisted
    unmatched order under its key: o:a must be deleted (it was not: a restore gave o:a, 'an
    order's own key wins', over the settled pair, and a late copy of the payment was
    recovered)."""
    h, log = Harness(), {}
    h.order(BASE, oid="a")
    _commit(h, log)
    h.pay(BASE + T + 1, oid="a", pid="pa")
    h.order(BASE + T + 1, oid="a")
    assert h.take().matched == 1
    assert (Store.ORDERS, "a", None) in _commit(h, log)
    _log_is_live(h, log, BASE + T + 1)
    h.advance(BASE + 3 * T, True, True)
    assert "a" in h.join.settled
    _commit(h, log)
    assert b"o:a" not in log or log[b"o:a"] is None
    again = _log_is_live(h, log, BASE + 3 * T)
    again.pay(BASE + T + 251, oid="a", pid="pa")  # a copy of the payment, landing late
    again.advance(BASE + 10 * T, True, True)
    out = again.take()
    assert out.recoveries == [] and out.duplicates == 1


def test_a_pending_payment_persisted_stays_one_key_through_a_second_payment_and_a_late_order() -> None:
    """(Never put over: a payment for an order with one pending is a duplicate or a second
    payment. The log still restores what is live at each commit.)"""
    h, log = Harness(), {}
    h.pay(BASE, oid="a", pid="pa")
    _commit(h, log)
    h.pay(BASE + 10, oid="a", pid="pa")
    h.pay(BASE + 20, oid="a", pid="pa-b")
    h.order(BASE + 2 * T, oid="a")  # past the deadline: late, the payment marked
    out = h.take()
    assert out.duplicates == 1 and [f.kind for f in out.anomalies] == ["duplicate_payment"] and len(out.late) == 1
    _commit(h, log)
    _log_is_live(h, log, BASE + 2 * T)
    h.advance(BASE + 3 * T, True, True)
    assert h.recovered_ids() == ["pa"]
    _commit(h, log)
    assert log[b"p:a"] is None
    _log_is_live(h, log, BASE + 3 * T)


def test_a_recovery_over_a_recovered_payment_the_log_holds_deletes_its_key_when_forgotten() -> None:
    """A log holding a recovered payment (r:a) and a later payment pending for the same order
    (p:a): an at_least_once commit that failed with the pending key delivered and the
    recovered one's tombstone not. Restored, the later payment is recovered over the
    restored one; forgotten the horizon later, its key must be deleted (it was not: the old
    r:a stayed, and a restore brought it back)."""
    first, log = Harness(), {}
    first.pay(BASE, oid="a", pid="pa")
    first.advance(BASE + 2 * T, True, True)
    assert first.recovered_ids() == ["pa"]
    _commit(first, log)
    later = Harness()
    later.pay(BASE + 2 * H, oid="a", pid="pa-2")
    _commit(later, log)
    assert sorted(k for k, v in log.items() if v is not None) == [b"p:a", b"r:a"]
    h = _restored(log, BASE + 2 * H)
    h.advance(BASE + 2 * H + 2 * T, True, True)
    assert h.recovered_ids() == ["pa-2"]
    h.advance(BASE + 3 * H + 2 * T, True, True)  # the horizon past its recovery
    assert h.join.sizes() == (0, 0, 0)
    _commit(h, log)
    assert [k for k, v in log.items() if v is not None] == [], "a stale key left in the log"
    _log_is_live(h, log, BASE + 3 * H + 2 * T)
