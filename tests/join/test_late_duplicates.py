"""Settled pairs: what the join keeps of a matched pair once its window has closed, so
that a duplicate of its payment, or a second payment for its order, delivered late (one
of several producers held up behind the others: soak-88769's false recoveries) is
dropped, or reported, and never recovered (the contract's "Join semantics").

A pair settles when the payments partition's progress passes its window (its order_id,
a 64-bit fingerprint of its payment_id, its window's end): the wall clock once the
partition is read to its end, its records' time in a backlog. It is forgotten once the
partition's records are LATE_HORIZON past that end (what two of them confirm, never past
the clock; not the clock the partition's progress is once read to its end: reading a
backlog to its end would take a pair matched in that interval past the horizon at once,
test_partial_commit.py). An idle payments partition keeps its settled pairs until its
records move on. (`Harness.payments_to`: two failed payments, which keep nothing, move
the records on.) It applies
to records stamped before its end + LATE_HORIZON (an order_id used again later is a new
order's). It survives restores: settled bundles in the changelog (b"s:"), numbered with
the matched pairs' bundles. Every test runs both cores (the Harness's native twin, held to the
Python core call by call and commit by commit).

Same conventions as test_core.py: T = 60 s timeout, G = 5 s grace, H = 1 h horizon.
"""

from __future__ import annotations

from streams.join import changelog
from streams.join.state import Store, fingerprint
from tests.join.harness import BASE, FAR, G, H, Harness, T
from tests.join.test_state import Log, _commit
from tests.join.twins import python_state

END = BASE + T + G  # the window's end of a pair at BASE (order and payment)


def _matched(h: Harness, oid: str = "a", pid: str = "pa", at: int = BASE) -> None:
    h.order(at, oid=oid)
    h.pay(at, oid=oid, pid=pid)
    assert h.take().matched == 1


def _restored(log: Log, now: int) -> Harness:
    h = Harness()
    h.restore({k: v for k, v in log.items() if v is not None}, now)
    return h


def test_a_pair_past_its_window_settles_and_is_forgotten_the_late_horizon_after_its_window() -> None:
    """(The payments partition read to its end: its progress is the clock.)"""
    h = Harness()
    _matched(h)
    h.advance(END - 1, payments_at_end=True, orders_at_end=True)
    assert h.join.sizes() == (0, 1, 0) and not h.join.settled
    h.advance(END, payments_at_end=True, orders_at_end=True)
    assert h.join.sizes() == (0, 0, 0) and h.join.settled == {"a": fingerprint("pa") << 64 | END}
    h.advance(END + H, payments_at_end=True, orders_at_end=True)
    assert "a" in h.join.settled, "the clock alone forgets nothing"
    h.payments_to(END + H - 1)
    h.advance(END + H, payments_at_end=True, orders_at_end=True)
    assert "a" in h.join.settled
    h.payments_to(END + H)
    h.advance(END + H, payments_at_end=True, orders_at_end=True)
    assert not h.join.settled and not h.join.state.settled_queue


def test_payments_progress_alone_settles_and_forgets_the_clock_alone_nothing() -> None:
    """Records stamped past the window settle the pair whatever the clock; the clock far
    ahead forgets nothing, the partition read to its end or not (a backlog): records
    stamped the horizon past the window do."""
    h = Harness()
    _matched(h)
    for i in range(3):
        h.order(END + i, oid=f"x{i}")
        h.pay(END + i, oid=f"x{i}")
    h.advance(END + 10)  # (the wall clock at the records: payments confirm END + 1)
    assert "a" in h.join.settled
    h.advance(END + 10 * H)
    assert "a" in h.join.settled
    h.pay(END + H, oid="y1")
    h.pay(END + H, oid="y2")
    h.advance(END + 10 * H)
    assert "a" not in h.join.settled
    h = Harness()
    _matched(h)
    h.advance(END + 1, True, True)
    h.advance(END + 10 * H, True, True)
    assert "a" in h.join.settled
    h.payments_to(END + H)
    h.advance(END + 10 * H, True, True)
    assert not h.join.settled


def test_a_pair_whose_window_is_already_the_horizon_behind_the_clock_settles_all_the_same() -> None:
    """A backlog read to its end hours late: its pairs leave the live state at once, and
    settle (they went at once, and a payment read again after the interval's offsets
    commit failed was recovered: test_partial_commit.py)."""
    h = Harness()
    _matched(h)
    h.advance(END + H, payments_at_end=True, orders_at_end=True)
    assert h.join.sizes() == (0, 0, 0) and h.join.settled == {"a": fingerprint("pa") << 64 | END}
    assert [(c.store, c.value) for c in h.commit()] == [(Store.SETTLED, [("a", fingerprint("pa"), END)])]


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
    h.payments_to(END + H + 1)
    h.advance(END + H + 1, payments_at_end=True, orders_at_end=True)  # kept's own time has come, b's not
    assert list(h.join.settled) == ["b", "kept"]
    h.payments_to(END + H + 5_000)
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
    again.payments_to(END + H)
    again.advance(END + H, payments_at_end=True, orders_at_end=True)
    assert list(again.join.settled) == ["b"] and _commit(again, log) == []
    again.payments_to(END + H + 1_000)
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
    h.payments_to(END + H)
    h.advance(END + H, payments_at_end=True, orders_at_end=True)
    assert list(h.join.settled) == ["b", "c"]
    _matched(h, "a", "pa-new", END + H)
    _commit(h, log)
    assert log[b"s:000000000001"] is not None
    again = _restored(log, END + H)
    assert again.join.orders["a"].paid_id == "pa-new" and list(again.join.settled) == ["b", "c"]


def test_a_stale_settled_entry_restored_beside_an_order_key_is_harmless() -> None:
    """A settled entry forgotten, then the order again (waiting under its own key) while
    the settled bundle is still in the log: restored, the entry is back (the live join
    keeps an entry beside an order's key too, for records stamped before its end + the
    horizon), and the order's records, stamped past that, are the order's: its payment
    matches it."""
    h, log = Harness(), {}
    _matched(h, "a", "pa", BASE)
    _matched(h, "b", "pb", BASE + 60_000)
    _commit(h, log)
    h.advance(END, payments_at_end=True, orders_at_end=True)
    h.advance(END + 60_000, payments_at_end=True, orders_at_end=True)
    _commit(h, log)
    h.payments_to(END + H)
    h.advance(END + H, payments_at_end=True, orders_at_end=True)
    assert list(h.join.settled) == ["b"]
    h.order(END + H, oid="a")
    _commit(h, log)
    again = _restored(log, END + H)
    assert list(again.join.settled) == ["a", "b"] and again.join.orders["a"].paid_id is None
    for w in (h, again):
        w.pay(END + H, oid="a", pid="pa-new")
        assert w.take().matched == 1


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


# ---------------------------------------------------------------- a backlog older than the horizon


def test_a_late_copy_of_a_matched_payment_read_in_a_backlog_older_than_the_horizon_is_dropped() -> None:
    """The soak's case (a copy stamped just after its payment, appended behind later-stamped
    payments by a held-up producer), read in a backlog after the join was down longer than
    LATE_HORIZON: the pair settles by the payments' progress (its records' time), not the
    clock, so the copy is dropped (it was recovered: by the clock, the pair's window was
    already the horizon behind). Then the progress moves the horizon on and it is forgotten."""
    h = Harness()
    now = BASE + 2 * H  # the join comes back 2 h after these records were appended
    h.order(BASE, oid="a")
    h.pay(BASE, oid="a", pid="pa")
    for i in range(4):  # later payments (and their orders), past the pair's window
        h.order(END + i * 1000, oid=f"x{i}")
        h.pay(END + i * 1000, oid=f"x{i}", pid=f"px{i}")
    h.advance(now, False, False)  # one batch of the backlog decided
    assert "a" not in h.join.orders and "a" in h.join.settled
    h.pay(BASE + 250, oid="a", pid="pa")  # the copy, 0.25 s later, read behind them
    for i in range(4, 8):
        h.order(END + i * 1000, oid=f"x{i}")
        h.pay(END + i * 1000, oid=f"x{i}", pid=f"px{i}")
    h.advance(now + 1_000, False, False)
    out = h.take()
    assert out.recoveries == [] and out.duplicates == 1
    h.order(END + H, oid="y")
    h.pay(END + H, oid="y")
    h.pay(END + H, oid="z")
    h.advance(now + 2_000, False, False)
    assert "a" not in h.join.settled and "x0" in h.join.settled, "the horizon's worth of the records' time"
    h.advance(now + 3_000, True, True)  # caught up: the clock, which forgets nothing
    assert "x0" in h.join.settled and "y" in h.join.settled
    h.payments_to(now + 3_000)  # the records do
    h.advance(now + 3_000, True, True)
    assert list(h.join.settled) == ["y"]  # (x7's end was 2 h behind them; y's is not)


def test_the_same_copy_with_the_join_caught_up_is_dropped() -> None:
    h = Harness()
    h.order(BASE, oid="a")
    h.pay(BASE, oid="a", pid="pa")
    for i in range(4):
        h.order(END + i * 1000, oid=f"x{i}")
        h.pay(END + i * 1000, oid=f"x{i}", pid=f"px{i}")
    h.advance(END + 4000, False, False)
    h.pay(BASE + 250, oid="a", pid="pa")
    h.advance(END + 10 * T, True, True)
    assert h.take().recoveries == []


def test_an_order_kept_past_its_window_in_a_backlog_older_than_the_horizon_still_meets_its_late_payment() -> None:
    """bd4240a's case (a payment landing behind payments stamped past its order's window),
    read in a backlog more than LATE_HORIZON old: the unmatched order is kept by the
    payments' progress, so the payment matches it (it was recovered, its order read
    before it: by the clock, the order's window was already the horizon behind)."""
    h = Harness()
    now = BASE + 2 * H
    h.order(BASE, oid="a")
    for i in range(4):
        h.order(END + i * 1000, oid=f"x{i}")
        h.pay(END + i * 1000, oid=f"x{i}", pid=f"px{i}")
    h.advance(now, False, False)
    assert "a" in h.join.orders
    h.pay(BASE + 10, oid="a", pid="pa")
    assert h.take().matched == 5
    h.advance(now + 1_000, True, True)
    out = h.take()
    assert out.recoveries == [] and "a" not in h.join.orders


def test_a_payment_stamped_past_a_kept_orders_window_does_not_match_it() -> None:
    """An unmatched order kept past its window (for a payment stamped inside it, landing
    late) is no match for a payment stamped past its window: 'matches the order whose
    event time lies in [t - ORDER_TIMEOUT, t + ORDER_TIMEOUT]'. The payment is recovered."""
    for at in (BASE + T + 1, END + H - 1):  # past its window; just before it goes
        h = Harness()
        h.order(BASE, oid="a")
        h.advance(at, True, True)
        assert "a" in h.join.orders  # kept
        h.pay(at, oid="a", pid=f"pa-{at}")
        assert h.take().matched == 0
        h.advance(at + T + G, True, True)
        assert h.recovered_ids() == [f"pa-{at}"]
        assert h.take().late == []


# ---------------------------------------------------------------- an order_id used again


def test_a_payment_stamped_past_a_settled_entrys_end_and_horizon_is_a_new_one_even_if_the_entry_is_back() -> None:
    """A settled pair forgotten while its bundle stays in the log (a bundle mate is not
    forgotten yet): a restore installs it again. A payment for that order_id stamped past
    its end + LATE_HORIZON is a new order's, with or without it (it was a duplicate_payment
    anomaly after the restore, never recovered)."""
    h, log = Harness(), {}
    _matched(h, "a", "pa", BASE)
    _matched(h, "b", "pb", BASE + 60_000)
    _commit(h, log)
    h.advance(END + 60_000, True, True)
    _commit(h, log)  # s:1 = [a, b]
    h.payments_to(END + H)
    h.advance(END + H, True, True)  # a forgotten, b not
    assert list(h.join.settled) == ["b"]
    _commit(h, log)
    assert log.get(b"s:000000000001") is not None
    again = _restored(log, END + H)
    assert list(again.join.settled) == ["a", "b"]  # (a stale one back: harmless)
    for w in (h, again):
        w.pay(END + H, oid="a", pid="pa-new")  # (its order never comes)
        w.advance(END + H + T + G + 1, True, True)
        out = w.take()
        assert [r.payment.payment_id for r in out.recoveries] == ["pa-new"] and out.anomalies == []


def test_an_order_id_used_again_while_its_settled_pair_is_not_forgotten_is_a_new_order() -> None:
    """The payments' progress behind (a backlog): a pair's settled entry is still kept when
    the order_id's next order and payment, stamped past its end + LATE_HORIZON, are read.
    They match (the order was a duplicate, the payment an anomaly); the new pair settles in
    the entry's place, at the end of the queue with its later end, so that it holds up
    no pair settled before it (an order_id kept in its first place held the others)."""
    h, log = Harness(), {}
    _matched(h, "a", "pa", BASE)
    _matched(h, "c", "pc", BASE + 1_000)
    h.pay(END + 1_000, oid="x0")
    h.pay(END + 1_001, oid="x1")
    h.advance(FAR)
    assert list(h.join.settled) == ["a", "c"]
    h.order(END + H, oid="a")
    h.pay(END + H, oid="a", pid="pa-2")
    out = h.take()
    assert (out.matched, out.duplicates, out.anomalies) == (1, 0, [])
    h.pay(BASE + 500, oid="a", pid="pa")  # (a late copy of the first payment: the new pair's)
    assert [f.kind for f in h.take().anomalies] == ["duplicate_payment"]
    h.pay(END + H + T + G, oid="y0")
    h.pay(END + H + T + G, oid="y1")
    h.advance(FAR)  # the new pair's window passes; c's end is the horizon behind
    assert list(h.join.settled) == ["a"] and h.join.settled["a"] & ((1 << 64) - 1) == END + H + T + G
    _commit(h, log)
    assert list(_restored(log, FAR).join.settled) == ["a"]


def test_a_restore_lines_settled_pairs_up_as_the_live_join_does() -> None:
    """An order_id settled again is in two bundles: the restore puts it where the later one
    has it (it kept the first one's place, ahead of entries forgotten live, and its later
    end held them back until that end + LATE_HORIZON)."""
    h, log = Harness(), {}
    _matched(h, "y", "py", BASE)
    _matched(h, "x", "px", BASE + 30_000)
    _matched(h, "z", "pz", BASE + 60_000)
    _commit(h, log)
    h.advance(END + 60_000, True, True)
    _commit(h, log)  # s:1 = [y, x, z]
    now = END + H + 30_000  # y and x forgotten, z not
    h.payments_to(now)
    h.advance(now, True, True)
    assert list(h.join.settled) == ["z"]
    h.order(now - 70_000, oid="y")  # y again: matched and past its window in this interval
    h.pay(now - 70_000, oid="y", pid="py-2")
    h.advance(now + 1, True, True)
    assert list(h.join.settled) == ["z", "y"]
    _commit(h, log)  # s:2 = [y]; s:1 still in the log (z)
    assert log.get(b"s:000000000001") is not None
    again = _restored(log, now + 1)
    assert list(again.join.settled) == ["x", "z", "y"]  # (x, forgotten live, back: its end is behind)
    again.payments_to(now + 1)  # (the records read again after the install)
    again.advance(now + 1, True, True)
    assert list(again.join.settled) == list(h.join.settled) == ["z", "y"]
