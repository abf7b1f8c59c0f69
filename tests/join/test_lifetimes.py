"""How long the join core remembers what it keeps, live and after a restore: state is
bounded by the windows and the late horizon (the contract's "Join semantics").

Same conventions as test_core.py: T = 60 s timeout, G = 5 s grace, H = 1 h horizon.
"""

from __future__ import annotations

import pytest

from streams.join import changelog
from tests.join.harness import BASE, G, H, Harness, T


def test_a_matched_pair_is_remembered_until_payments_pass_the_window_of_its_later_record() -> None:
    """The order at BASE, its payment T later: the pair is kept for T + G after the payment
    (to recognise a second payment), not after the order."""
    h = Harness()
    h.order(BASE, oid="p")
    h.pay(BASE + T, oid="p")
    assert h.take().matched == 1
    h.advance(BASE + T + G, payments_at_end=True, orders_at_end=True)  # the order's own window closes
    h.advance(BASE + 2 * T + G - 1, payments_at_end=True, orders_at_end=True)
    assert h.join.sizes() == (0, 1, 0)
    h.pay(BASE + 2 * T + G - 1, oid="p", pid="pay-other")
    out = h.take()
    assert [a.kind for a in out.anomalies] == ["duplicate_payment"] and h.join.sizes() == (0, 1, 0)
    h.advance(BASE + 2 * T + G, payments_at_end=True, orders_at_end=True)
    assert h.join.sizes() == (0, 0, 0), "past its window: forgotten"


def _restored(h: Harness, fmt: int = 3) -> Harness:
    """A core rebuilt, value by value, from what the live one gives the changelog now (in
    changelog format `fmt`: 2 is what a worker of the release before format 3 wrote)."""
    clone = Harness()
    clone.restore(dict(changelog.encode(change, fmt) for change in h.commit()))
    return clone


@pytest.mark.parametrize("fmt", [3, 2])
def test_a_core_restored_from_the_changelog_times_out_and_forgets_exactly_when_the_live_one_does(fmt: int) -> None:
    """Whichever format the changelog was written in: a pending payment of format 2 is
    restored one by one (core.restore), of format 3 in one pass (restore_pending); each
    path schedules its timer."""
    live = Harness()
    recovered_at = BASE - 9 * T + G
    live.pay(BASE - 10 * T, oid="recovered")
    live.advance(recovered_at, payments_at_end=True, orders_at_end=True)
    assert live.recovered_ids() == ["pay-recovered"]
    live.pay(BASE, oid="pending")
    live.order(BASE + 1_000, oid="waiting")
    live.pay(BASE + 2_000, oid="matched")
    live.order(BASE + 3_000, oid="matched")
    live.take()
    clone = _restored(live, fmt)
    assert clone.join.sizes() == live.join.sizes() == (1, 2, 1)
    edges = [BASE + T + G, BASE + T + G + 1_000, BASE + T + G + 3_000, recovered_at + H, BASE + T + G + H,
             BASE + T + G + 1_000 + H]  # (the unmatched order: kept the horizon past its window)
    recovered = []
    for now in sorted({t + d for t in edges for d in (-1, 0)}):
        for h in (live, clone):
            h.advance(now, payments_at_end=True, orders_at_end=True)
        a, b = live.take(), clone.take()
        assert [r.payment for r in b.recoveries] == [r.payment for r in a.recoveries], now
        recovered += [(now, r.payment.payment_id) for r in a.recoveries]
        assert clone.join.sizes() == live.join.sizes(), now
    assert recovered == [(BASE + T + G, "pay-pending")]
    assert live.join.sizes() == (0, 0, 0)
