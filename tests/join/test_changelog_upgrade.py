"""State that survives upgrades: a changelog written by an earlier release is restored by
this one and gives the same decisions.

Each fixture in `WRITTEN` holds changelog records as a release wrote them, produced by
`scenario()` below with that release, and what a join restored from them decided next:
`changelog-2026-11.json` format 2 (fields and traces beside the payment's JSON),
`changelog-2026-11-compact.json` format 3 (compact pending payments). A change to the
changelog format must keep this test passing unchanged (add a new fixture beside the
others, never edit one): a rolling upgrade restores what the previous release wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.join import changelog, compact
from tests.join.harness import BASE, FAR, Decimal, G, Harness, T

FIXTURES = Path(__file__).parent / "fixtures"
# Every format a release wrote, oldest first; the last is what this release writes.
WRITTEN = ["changelog-2026-11.json",  # format 2: fields and traces beside the payment's JSON
           "changelog-2026-11-compact.json"]  # format 3: compact pending payments (compact.py)
FIXTURE = FIXTURES / WRITTEN[-1]
TP = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TO = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def scenario(fmt: int = 3) -> dict[bytes, bytes | None]:
    """The state a join had written: pending payments (with and without a trace), a matched
    pair, an order waiting for its payment, a recovered payment marked for late orders."""
    h = Harness()
    h.pay(BASE, oid="a", trace=TP, amount=Decimal("12.30"))
    h.pay(BASE + 10, oid="b")
    h.pay(BASE + 20, oid="c")
    h.order(BASE + 30, oid="c")
    h.order(BASE + 40, oid="o", trace=TO)
    h.pay(BASE - T - G - 10_000, oid="d", trace=TP)
    h.advance(BASE + 50)  # d is past its deadline by the wall clock and the payments' progress
    assert [r.payment.order_id for r in h.take().recoveries] == ["d"]
    latest: dict[bytes, bytes | None] = {}
    for change in h.commit():
        key, value = changelog.encode(change, fmt)
        latest[key] = value
    return latest


def after_restore(latest: dict[bytes, bytes | None]) -> dict:
    """What a join restored from `latest` decides when its inputs go on."""
    h = Harness()
    h.restore(latest, BASE + 60)
    h.pay(BASE + 100, oid="o")  # the waiting order's payment: a match, no recovery
    h.order(BASE + 200, oid="d")  # the recovered payment's order: late
    h.order(BASE + 210, oid="c")  # the matched pair's order again: nothing new
    h.pay(BASE + T + G + 1_000, oid="z")  # both inputs move on: a and b are past their deadlines
    h.order(BASE + T + G + 1_000, oid="z")
    h.order(BASE + T + G + 1_001, oid="y")  # (progress is confirmed by two records)
    h.advance(FAR)
    out = h.take()
    return {
        "recovered": sorted((r.payment.order_id, r.payment.payment_id, str(r.payment.amount),
                             [t.decode() for t in r.traces]) for r in out.recoveries),
        "late": sorted((x.order.order_id, x.payment_id, x.recovery_id, [t.decode() for t in x.traces])
                       for x in out.late),
        "anomalies": sorted((f.kind, f.order_id) for f in out.anomalies),
    }


def _load(name: str = WRITTEN[-1]) -> tuple[dict[bytes, bytes | None], dict]:
    data = json.loads((FIXTURES / name).read_text())
    latest = {bytes.fromhex(k): (None if v is None else bytes.fromhex(v)) for k, v in data["records"].items()}
    return latest, data["decided"]


@pytest.mark.parametrize("name", WRITTEN)
def test_a_changelog_written_by_each_release_restores_to_the_same_decisions(name: str) -> None:
    latest, decided = _load(name)
    got = after_restore(latest)
    assert json.loads(json.dumps(got)) == decided
    assert [r[0] for r in decided["recovered"]] == ["a", "b"] and [x[0] for x in decided["late"]] == ["d"]


def test_this_release_still_writes_what_the_fixture_holds() -> None:
    """While the format is unchanged, today's writer produces the fixture's bytes; when it
    changes on purpose, this test names it (and the test above keeps the old records read)."""
    latest, _ = _load()
    assert scenario() == latest, "the changelog format changed: version it (changelog.py) and add a fixture"


if __name__ == "__main__":  # writes the fixture; run once per format, never over an existing one
    assert not FIXTURE.exists(), f"{FIXTURE} exists; a fixture is never rewritten"
    records = scenario()
    FIXTURE.write_text(json.dumps({
        "written_by": "slipguard join, changelog format 3 (compact pending payments), November 2026",
        "records": {k.hex(): (None if v is None else v.hex()) for k, v in records.items()},
        "decided": after_restore(records),
    }, indent=1, sort_keys=True) + "\n")


def test_format_2_written_by_this_release_is_what_the_release_before_wrote() -> None:
    """SLIPGUARD_CHANGELOG_FORMAT=2, for a rolling upgrade from (or a rollback to) the
    release before format 3, which reads only format 2: the same bytes it wrote."""
    old, _ = _load(WRITTEN[0])
    assert scenario(fmt=2) == old


def test_format_2_carries_no_packed_payment_anywhere() -> None:
    """Payments packed at an earlier commit (so matched pairs and recovered payments hold the
    packed part) go out as their JSON in format 2, and restore to the same decisions."""
    h = Harness()
    for oid in ("m", "r", "w"):
        h.pay(BASE, oid=oid, trace=TP, amount=Decimal("12.30"))
    first = list(h.commit())
    h.order(BASE + 10, oid="m")
    h.pay(BASE + T + G, oid="z")
    h.order(BASE + T + G, oid="z")
    h.order(BASE + T + G, oid="y")
    h.advance()
    assert len(h.take().recoveries) == 2
    second = h.commit()
    logs = {}
    for fmt in (2, 3):
        latest: dict[bytes, bytes | None] = {}
        for change in first + second:
            key, value = changelog.encode(change, fmt)
            latest[key] = value
        logs[fmt] = {k: v for k, v in latest.items() if v is not None}
    packed_in_3 = 0
    for fmt, latest in logs.items():
        for key, value in latest.items():
            change = changelog.decode(key, value, now_ms=BASE)
            if key.startswith(b"p:"):
                assert bool(value[8] & compact.COMPACT) == (fmt == 3)
            records = ([pair.paid_raw for _, pair in change.value] if key.startswith(b"m:")
                       else [change.value.raw] if key.startswith(b"r:") else [])
            packed = sum(compact.is_part(r) for r in records)
            assert fmt == 3 or packed == 0, key
            packed_in_3 += packed if fmt == 3 else 0
    assert packed_in_3 == 3, "format 3 keeps the packed parts (the matched pair and two recovered)"
    assert after_restore(logs[2]) == after_restore(logs[3])


# ---------------------------------------------------------------- format 4 and a rollback to 3


def _commit(h: Harness, log: dict[bytes, bytes | None], fmt: int) -> list[bytes]:
    """A commit written as a worker writing `fmt` sends it (changelog.written), into `log`."""
    records = changelog.written([(0, *changelog.encode(c, fmt)) for c in h.commit()], fmt)
    for _, k, v in records:
        log[k] = v
    return [k for _, k, _ in records]


def _settled_keys(log: dict[bytes, bytes | None]) -> list[bytes]:
    return [k for k, v in log.items() if k.startswith(b"s:") and v is not None]


def test_a_worker_rolled_back_to_format_3_deletes_the_settled_bundles_a_format_4_worker_left() -> None:
    """docs/upgrades.md's rollback: a roll to SLIPGUARD_CHANGELOG_FORMAT=3, LATE_HORIZON, then
    the release before format 4, which stops at a restore that finds an s: key. The worker
    writing format 3 leaves new settled bundles out but writes the tombstones of those in
    the log once their pairs are forgotten, so that none is left."""
    end = BASE + T + G
    h, log = Harness(), {}
    h.order(BASE, oid="a")
    h.pay(BASE, oid="a", pid="pa")
    _commit(h, log, 4)
    h.advance(end, True, True)
    assert b"s:000000000001" in _commit(h, log, 4)  # format 4: the settled bundle
    w = Harness()  # the roll: the partition restored by a worker writing format 3
    w.restore({k: v for k, v in log.items() if v is not None}, end)
    assert "a" in w.join.settled
    w.order(end, oid="b")  # a pair settled under format 3: its bundle is left out
    w.pay(end, oid="b", pid="pb")
    w.advance(end + T + G, True, True)
    assert "b" in w.join.settled and not [k for k in _commit(w, log, 3) if k.startswith(b"s:")]
    w.payments_to(end + 3_600_000)  # (settled pairs go by the payments' records)
    w.advance(end + 3_600_000, True, True)  # LATE_HORIZON past the first pair's window
    assert list(w.join.settled) == ["b"]
    assert _commit(w, log, 3) == [b"s:000000000001"] and log[b"s:000000000001"] is None
    assert _settled_keys(log) == []
    w.payments_to(end + T + G + 3_600_000)
    w.advance(end + T + G + 3_600_000, True, True)
    assert not w.join.settled
    assert _commit(w, log, 3) == [b"s:000000000002"]  # (b's bundle, never written: a tombstone alone)
    assert _settled_keys(log) == []


def test_format_2_carries_the_settled_bundles_tombstones_too() -> None:
    """(The native pipeline rewrites each record it writes in format 2: a tombstone of an s:
    key goes through as it is.)"""
    h = Harness()
    h.order(BASE, oid="a")
    h.pay(BASE, oid="a", pid="pa")
    h.commit()
    h.advance(BASE + T + G, True, True)
    h.commit()
    h.payments_to(BASE + T + G + 3_600_000)  # (settled pairs go by the payments' records)
    h.advance(BASE + T + G + 3_600_000, True, True)
    records = [(0, *changelog.encode(c, 2)) for c in h.commit()]
    assert records == [(0, b"s:000000000001", None)]
    assert changelog.written(records, 2) == records
    assert [(p, *changelog.encode(changelog.decode(k, v), 2)) for p, k, v in records] == records
