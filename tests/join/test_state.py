"""The join's state and its changelog bookkeeping (streams/join/state.py): each commit
writes what a restore needs to rebuild the live state, no less (a value left behind comes
back at the next restart) and no more (a tombstone for a key the changelog does not hold),
across put, delete, changed, mark_late, expiry and restarts."""

from __future__ import annotations

import pytest

from streams.join import changelog
from streams.join.state import BUNDLE_MAX_BYTES, PAIR_OVERHEAD, BufferedOrder, Change, JoinState, Store
from tests.join.harness import BASE, FAR, G, H, Harness, T

D = BASE + T  # the deadline of a payment at BASE
Log = dict[bytes, bytes | None]


def _commit(h: Harness, log: Log) -> list[tuple[Store, object, object]]:
    """One commit into `log`; the changes as (store, key, order ids of a bundle | "value" | None)."""
    shown = []
    for change in h.commit():
        key, value = changelog.encode(change)
        log[key] = value
        v = change.value
        shown.append((change.store, change.key,
                      [e[0] for e in v] if isinstance(v, list) else (None if v is None else "value")))
    return shown


def _restored(log: Log, now_ms: int = BASE) -> Harness:
    """A join restored from the compacted `log`, as a worker taking over the partition makes it."""
    h = Harness()
    h.restore({k: v for k, v in log.items() if v is not None}, now_ms)
    return h


# ---------------------------------------------------------------- deletes reach the changelog


def test_an_unmatched_order_that_expires_is_deleted_from_the_changelog() -> None:
    h, log = Harness(), {}
    h.order(BASE, oid="x")
    assert _commit(h, log) == [(Store.ORDERS, "x", "value")]
    h.advance(BASE + T + G + H, payments_at_end=True, orders_at_end=True)  # (kept the horizon past its window)
    assert h.join.sizes() == (0, 0, 0)
    assert _commit(h, log) == [(Store.ORDERS, "x", None)]
    assert _restored(log).join.sizes() == (0, 0, 0), "a restart does not bring it back"


def test_an_order_read_before_a_payment_whose_deadline_it_is_past_is_deleted_from_the_changelog() -> None:
    h, log = Harness(), {}
    h.order(D + 1, oid="x")
    _commit(h, log)
    h.pay(BASE, oid="x")  # the order is late: it goes, the payment waits for its recovery
    assert [x.payment_id for x in h.take().late] == ["pay-x"]
    assert sorted(_commit(h, log), key=str) == [(Store.ORDERS, "x", None), (Store.PENDING, "x", "value")]
    assert _restored(log).join.sizes() == (1, 0, 0)


def test_an_order_restored_from_the_changelog_is_deleted_from_it_when_it_expires() -> None:
    h, log = Harness(), {}
    h.order(BASE, oid="x")
    _commit(h, log)
    again = _restored(log)
    again.advance(BASE + T + G + H, payments_at_end=True, orders_at_end=True)
    assert _commit(again, log) == [(Store.ORDERS, "x", None)]


def test_a_recovered_payment_restored_from_the_changelog_is_deleted_from_it_at_the_horizon() -> None:
    h, log = Harness(), {}
    h.pay(BASE, oid="r")
    h.advance(D + G, payments_at_end=True, orders_at_end=True)  # recovered by the wall clock at D + G
    assert h.recovered_ids() == ["pay-r"]
    assert _commit(h, log) == [(Store.RECOVERED, "r", "value")]
    again = _restored(log, now_ms=D + G)
    again.advance(D + G + H - 1, payments_at_end=True, orders_at_end=True)
    assert _commit(again, log) == []
    again.advance(D + G + H, payments_at_end=True, orders_at_end=True)
    assert _commit(again, log) == [(Store.RECOVERED, "r", None)]


def test_a_restored_matched_pair_expires_with_its_bundles_tombstone_alone() -> None:
    """A matched pair's own key was deleted when it went into its bundle: when the pair
    expires after a restart, only the bundle's tombstone is written."""
    h, log = Harness(), {}
    h.pay(BASE, oid="a")
    h.order(BASE + 1, oid="a")
    assert _commit(h, log) == [(Store.MATCHED, 0, ["a"])]
    again = _restored(log)
    again.advance(BASE + 1 + T + G, payments_at_end=True, orders_at_end=True)
    assert again.join.sizes() == (0, 0, 0)
    # (and it settles: a fingerprint in a bundle of its own, test_late_duplicates.py)
    assert _commit(again, log) == [(Store.MATCHED, 0, None), (Store.SETTLED, 1, ["a"])]


def test_an_order_published_again_after_its_first_expired_and_then_matched_leaves_no_stale_order_behind() -> None:
    """The first record of the order was in the changelog; it expired, and the order event
    came again and matched, all between two commits: the commit deletes the old value, or a
    restart would bring back the unmatched order in place of the matched pair."""
    h, log = Harness(), {}
    h.order(BASE, oid="x")
    _commit(h, log)
    # two payments confirm progress past the order's window and the late horizon
    h.pay(BASE + T + G + H, oid="p1")
    h.pay(BASE + T + G + H + 1, oid="p2")
    h.advance(FAR, payments_at_end=False, orders_at_end=False)
    assert "x" not in h.join.orders
    h.order(BASE + T + G + H + 2, oid="x")  # the order event, published again
    h.pay(BASE + T + G + H + 3, oid="x")
    assert h.take().matched == 1
    changes = _commit(h, log)
    assert (Store.ORDERS, "x", None) in changes and (Store.MATCHED, 0, ["x"]) in changes
    again = _restored(log)
    again.pay(BASE + T + G + H + 4, oid="x", pid="pay-other")
    assert [(a.kind, a.order_id) for a in again.take().anomalies] == [("duplicate_payment", "x")]


# ---------------------------------------------------------------- flags survive commits


def test_a_payment_whose_late_order_came_first_stays_late_across_a_commit_and_a_restart() -> None:
    h, log = Harness(), {}
    h.order(D + 1, oid="x")
    h.pay(BASE, oid="x")
    assert [x.payment_id for x in h.take().late] == ["pay-x"]
    _commit(h, log)
    h.order(D + 2, oid="x")  # the order event again
    assert h.take().late == [], "a late order is emitted once"
    again = _restored(log)
    again.order(D + 3, oid="x")
    again.advance(D + G, payments_at_end=True, orders_at_end=True)
    again.order(D + 4, oid="x")
    out = again.take()
    assert [r.payment.payment_id for r in out.recoveries] == ["pay-x"] and out.late == []


@pytest.mark.parametrize("trace", [None, b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"])
def test_a_payment_pending_across_a_commit_has_its_late_order_reported_once(trace: bytes | None) -> None:
    h, log = Harness(), {}
    h.pay(BASE, oid="x", trace=trace)
    _commit(h, log)  # packed
    h.order(D + 1, oid="x")
    assert [x.payment_id for x in h.take().late] == ["pay-x"]
    h.order(D + 2, oid="x")
    assert h.take().late == []
    _commit(h, log)
    again = _restored(log)
    for join in (h, again):
        join.order(D + 3, oid="x")
        join.advance(D + G, payments_at_end=True, orders_at_end=True)
        join.order(D + 4, oid="x")
        out = join.take()
        assert [r.payment.payment_id for r in out.recoveries] == ["pay-x"] and out.late == []


def test_a_payment_for_an_order_forgotten_in_the_same_commit_interval_keeps_its_late_order() -> None:
    """The order's first payment was in the changelog, recovered and forgotten (past the
    horizon) before the next commit; a second payment for it comes with its order already
    past its deadline: late once, whatever the key's changelog past."""
    h, log = Harness(), {}
    h.pay(BASE, oid="x", pid="first")
    _commit(h, log)
    h.advance(D + G, payments_at_end=True, orders_at_end=True)
    h.advance(D + G + H, payments_at_end=True, orders_at_end=True)
    assert h.recovered_ids() == ["first"] and h.join.sizes() == (0, 0, 0)
    late_ts = D + G + H + 10 * T
    h.order(late_ts, oid="x")
    h.pay(late_ts - 2 * T, oid="x", pid="second")  # its deadline is T before the order
    assert [x.payment_id for x in h.take().late] == ["second"]
    h.order(late_ts + 1, oid="x")
    assert h.take().late == [], "a late order is emitted once"
    _commit(h, log)
    again = _restored(log)
    again.order(late_ts + 2, oid="x")
    assert again.take().late == []


# ---------------------------------------------------------------- bundles


def test_bundles_are_numbered_one_after_another_across_restarts_and_none_is_overwritten() -> None:
    """Each commit's bundle takes the next number, also in a join restored from the
    changelog; so the first bundle's pairs are still there after two restarts."""
    h, log = Harness(), {}
    h.pay(BASE, oid="a")
    h.order(BASE + 1, oid="a")
    assert _commit(h, log) == [(Store.MATCHED, 0, ["a"])]
    h.pay(BASE + 2, oid="b")
    h.order(BASE + 3, oid="b")
    assert _commit(h, log) == [(Store.MATCHED, 1, ["b"])]
    for n, oid in enumerate("cd", start=2):
        h = _restored(log)
        h.pay(BASE + 2 * n, oid=oid)
        h.order(BASE + 2 * n + 1, oid=oid)
        assert _commit(h, log) == [(Store.MATCHED, n, [oid])]
    assert sorted(k for k in log if changelog.is_bundle(k)) == [b"m:%012d" % n for n in range(4)]
    last = _restored(log)
    for oid in "abcd":
        last.pay(BASE + 10, oid=oid, pid=f"second-{oid}")
    assert [(a.kind, a.order_id) for a in last.take().anomalies] == [("duplicate_payment", oid) for oid in "abcd"]


def test_an_empty_bundle_record_restores_to_nothing() -> None:
    h = _restored({changelog.encode_key(Store.MATCHED, 0): b""})
    assert h.join.sizes() == (0, 0, 0)
    h.pay(BASE, oid="a")
    h.order(BASE + 1, oid="a")
    h.advance(BASE, payments_at_end=True, orders_at_end=True)
    assert _commit(h, {}) == [(Store.MATCHED, 0, None), (Store.MATCHED, 1, ["a"])]


def _bundled(pairs: list[tuple[str, str, int]]) -> list[list[str]]:
    """Matched pairs (order_id, payment_id, payment record size) made in one commit
    interval: the order ids of each bundle the commit writes."""
    state = JoinState(T + G)
    for oid, pid, size in pairs:
        state.put(Store.ORDERS, oid, BufferedOrder(BASE, b"", None, pid, BASE, b"x" * size))
    changes = state.take_changes()
    assert all(c.store == Store.MATCHED for c in changes)
    return [[oid for oid, _ in _bundle(c)] for c in changes]


def _bundle(c: Change) -> list[tuple[str, BufferedOrder]]:
    assert isinstance(c.value, list)
    return c.value


def _worst_case(oid: str, pid: str, size: int) -> int:
    """A pair's size counted as the cap counts it: the encoded pair's fixed part, each id at
    UTF-8's worst (4 bytes a character), the payment record."""
    return PAIR_OVERHEAD + 4 * len(oid) + 4 * len(pid) + size


@pytest.mark.parametrize("ids", [("o0", "p0", "o1", "p1"), ("o" * 64, "p0", "o1", "p1"),
                                 ("o0", "p" * 64, "o1", "p1")])
def test_pairs_fill_a_bundle_up_to_the_cap_exactly_and_one_byte_more_starts_the_next(ids: tuple[str, ...]) -> None:
    assert changelog._PAIR.size <= PAIR_OVERHEAD  # the fixed part is never under-counted
    o0, p0, o1, p1 = ids
    first = 300_000
    rest = BUNDLE_MAX_BYTES - _worst_case(o0, p0, first) - _worst_case(o1, p1, 0)
    assert _bundled([(o0, p0, first), (o1, p1, rest)]) == [[o0, o1]]
    assert _bundled([(o0, p0, first), (o1, p1, rest + 1)]) == [[o0], [o1]]
    # and the same in the bundle after the first
    assert _bundled([("a", "pa", 400_000), (o0, p0, first), (o1, p1, rest)]) == [["a"], [o0, o1]]
    assert _bundled([("a", "pa", 400_000), (o0, p0, first), (o1, p1, rest + 1)]) == [["a"], [o0], [o1]]


@pytest.mark.parametrize(("oid_len", "pid_len"), [(62, 62), (5, 64), (64, 5)])
def test_bundles_stay_under_the_cap_with_ids_of_any_length(oid_len: int, pid_len: int) -> None:
    """The cap test in test_core.py uses short ids; long ones (up to 64 characters, either
    side) count in full too."""
    h = Harness()
    meta = {f"k{i:02d}": "x" * 40 for i in range(12)}
    n = 1_600
    for i in range(n):
        oid = f"{i:0{oid_len}d}"
        h.pay(BASE + i, oid=oid, pid=f"{i:0{pid_len}d}", metadata=meta)
        h.order(BASE + i, oid=oid)
    bundles = [c.value for c in h.commit() if c.store == Store.MATCHED]
    sizes = [len(changelog.encode_value(Store.MATCHED, b)) for b in bundles if isinstance(b, list)]
    assert len(sizes) >= 2 and max(sizes) <= BUNDLE_MAX_BYTES
    assert sum(len(b) for b in bundles if isinstance(b, list)) == n
