"""The fault tests' checker catches each broken invariant (a test that cannot fail is a
defect): from a run that keeps every promise, one promise is broken at a time. Pure: no
cluster needed (these run with the unit tests)."""

from __future__ import annotations

import copy
import socket
import threading
import time
from collections import Counter

import pytest

from tests.cluster.invariants import (
    Guarantee,
    Observed,
    Recovered,
    Scrape,
    by_contract,
    figures,
    http_get,
    longest_stops,
    violations,
)
from tests.cluster.recoveries import Landed, classify

EOS = Guarantee("exactly_once", "g-eos", {"p1-1": "o1-1", "p1-2": "o1-2"}, {"o1-3"}, once=True)
ALOS = Guarantee("at_least_once", "g-alos", {"p2-1": "o2-1"}, set(), once=False)
IDS = {"p1-1": "r11", "p1-2": "r12", "p2-1": "r21"}
OUTAGE = {"exactly_once/w1": (10.0, 20.0)}
KEY = ("g-eos", "t.payments", "0")


def _good() -> Observed:
    seen = Observed()
    seen.recoveries = [Recovered("p1-1", "o1-1", 1.2), Recovered("p1-2", "o1-2", 1.4),
                       Recovered("p2-1", "o2-1", 1.1), Recovered("p2-1", "o2-1", 6.0)]  # (at least once: may repeat)
    seen.late = ["o1-3"]
    seen.rows = Counter({"o1-1": 1, "o1-2": 1, "o2-1": 1})
    seen.written = Counter({"r11": 1, "r12": 1, "r21": 1})
    seen.outcomes = Counter({"inserted": 3})
    seen.reconciled = {"o1-3"}
    seen.exited = {"exactly_once/w1": None, "writer": None}
    seen.readiness = {"exactly_once/w1": [(1.0, None), (5.0, 200), (12.0, 503), (18.0, 503), (22.0, 200)],
                      "writer": [(1.0, 200), (22.0, 200)]}
    seen.lag = [Scrape(0.5, None), Scrape(1.0, 200, {KEY: 0.0}, {KEY: 10.0}, 0.3),
                Scrape(15.0, 200, {KEY: 0.0}, {KEY: 20.0}, 12.0), Scrape(21.0, 200, {KEY: 20.0}, {KEY: 20.0}, 0.4)]
    return seen


def _check(seen: Observed) -> list[str]:
    return violations([EOS, ALOS], seen, outages=OUTAGE, recovery_ids=IDS)


def test_a_run_that_keeps_every_promise_passes() -> None:
    assert _check(_good()) == []


def _broken(change) -> list[str]:
    seen = copy.deepcopy(_good())
    change(seen)
    return _check(seen)


@pytest.mark.parametrize(("what", "change", "says"), [
    ("double publish under exactly_once", lambda s: s.recoveries.append(Recovered("p1-1", "o1-1", 2.0)),
     "more than once"),
    ("a lost recovery", lambda s: s.recoveries.pop(1), "due recoveries missing"),
    ("a false recovery", lambda s: s.recoveries.append(Recovered("p9-9", "o9-9", 1.0)), "false recovery"),
    ("a lost late order", lambda s: s.late.clear(), "late orders not on orders.late"),
    ("an invented late order", lambda s: s.late.append("o1-1"), "reported late"),
    ("a row missing", lambda s: s.rows.pop("o1-2"), "without a row"),
    ("a row for an order that came back", lambda s: s.rows.update({"o1-9": 1}), "not missing"),
    ("a row written twice", lambda s: s.rows.update({"o1-1": 1}), "more than once"),
    ("an audit row twice", lambda s: s.written.update({"r11": 1}), "audit rows"),
    ("an audit row missing", lambda s: s.written.pop("r21"), "audit rows"),
    ("an outcome other than inserted", lambda s: s.outcomes.update({"already_present": 1}), "outcomes"),
    ("a late order not reconciled", lambda s: s.reconciled.clear(), "not reconciled"),
    ("a worker down for good", lambda s: s.exited.update({"exactly_once/w1": -9}), "is down"),
    ("not ready at the end", lambda s: s.readiness["writer"].append((30.0, 503)), "not ready at the end"),
    ("ready all through a real outage", lambda s: s.readiness.update(
        {"exactly_once/w1": [(5.0, 200), (12.0, 200), (18.0, 200), (22.0, 200)]}), "ready all through"),
    ("never ready after the outage", lambda s: s.readiness.update(
        {"exactly_once/w1": [(5.0, 200), (12.0, 503), (22.0, 503), (30.0, 503)]}), "never ready again"),
    ("the exporter not answering", lambda s: s.lag.insert(2, Scrape(8.0, None)), "did not answer"),
    ("a lag series vanishing", lambda s: s.lag[2].series.clear(), "vanished"),
    ("lag unrefreshed too long", lambda s: setattr(s.lag[2], "age", 45.0), "unrefreshed"),
    ("lag stale at the end", lambda s: setattr(s.lag[-1], "age", 9.0), "not fresh"),
])
def test_each_broken_invariant_is_caught(what: str, change, says: str) -> None:
    found = _broken(change)
    assert found, f"{what}: not caught"
    assert any(says in line for line in found), f"{what}: caught as {found}"


def test_at_least_once_may_repeat_but_exactly_once_may_not() -> None:
    strict = copy.deepcopy(ALOS)
    strict.once = True
    assert any("more than once" in v for v in violations([EOS, strict], _good(), outages=OUTAGE, recovery_ids=IDS))


def test_each_of_several_outages_of_one_process_is_checked() -> None:
    """(The soak cuts one worker off more than once.) The first outage is seen, the second
    is not: that one alone is reported."""
    seen = _good()
    seen.readiness["exactly_once/w1"] += [(32.0, 200), (38.0, 200), (42.0, 200)]
    found = violations([EOS, ALOS], seen, outages={"exactly_once/w1": [(10.0, 20.0), (30.0, 40.0)]},
                       recovery_ids=IDS)
    assert found == ["exactly_once/w1 said it was ready all through its outage at t=30.0"]


def test_figures_say_what_an_operator_saw() -> None:
    f = figures([EOS, ALOS], _good())
    assert f["exactly_once"] == {"recoveries": 2, "duplicates": 0, "lateness_p50_s": 1.3, "lateness_max_s": 1.4,
                                 "longest_partition_stop_s": 14.0}
    assert f["at_least_once"]["duplicates"] == 1
    assert f["not_ready_s"] == {"exactly_once/w1": 10.0, "writer": 0}  # (from its first ready answer on)
    assert f["lag_refresh_age_max_s"] == 12.0


def test_a_partition_caught_up_is_not_stopped() -> None:
    idle = [Scrape(t, 200, {KEY: 5.0}, {KEY: 5.0}, 0.1) for t in (0.0, 10.0, 20.0)]
    assert longest_stops(idle, "g-eos") == {}


def test_an_answer_cut_short_is_no_answer() -> None:
    """A process stopping while it answers (the soak stops workers under the poller)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def answer_half() -> None:
            conn, _ = server.accept()
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nok")
            conn.close()

        threading.Thread(target=answer_half, daemon=True).start()
        assert http_get(server.getsockname()[1], "/readyz", timeout=5) == (None, "")


# ------------------------------------------------------------------ recoveries by the contract
# EOS's plan, plus: p1-4 (its order o1-4 landed behind later records: late by disorder),
# p1-5 (o1-5 appended after the recovery: in flight), p1-6 (o1-6 in the log well before:
# false). Deadline 5,000, GRACE 1,000.

LATE_BY_CONTRACT = {
    "p1-4": Landed("o1-4", 5_000, 0, 10, 4_000, 4_500, 6_500),
    "p1-5": Landed("o1-5", 5_000, 1, 11, 4_000, 8_000, 5_500),
    "p1-6": Landed("o1-6", 5_000, 1, 12, 4_000, 3_000, 5_500),
}


def _by_contract(recovered_at: dict[str, int]) -> list[Guarantee]:
    planned = dict(EOS.recovered)
    at = dict.fromkeys(planned, 6_100) | recovered_at
    c = classify(planned, set(), 20, at, {pid: LATE_BY_CONTRACT[pid] for pid in recovered_at}, 1_000)
    return [by_contract(EOS, c), ALOS]


def _late_by_contract(seen: Observed) -> Observed:
    """The join did what the contract says of p1-4 and p1-5: recovered, their orders late."""
    seen.recoveries += [Recovered("p1-4", "o1-4", 2.0, 7_000), Recovered("p1-5", "o1-5", 2.0, 7_000)]
    seen.late += ["o1-4", "o1-5"]
    seen.rows.update({"o1-4": 1, "o1-5": 1})
    seen.written.update({"r14": 1, "r15": 1})
    seen.outcomes.update({"inserted": 2})
    seen.reconciled |= {"o1-4", "o1-5"}
    return seen


IDS_BY_CONTRACT = IDS | {"p1-4": "r14", "p1-5": "r15", "p1-6": "r16"}


def test_recoveries_late_by_disorder_or_in_flight_are_due_with_their_late_orders() -> None:
    expected = _by_contract({"p1-4": 7_000, "p1-5": 7_000})
    assert violations(expected, _late_by_contract(_good()), outages=OUTAGE, recovery_ids=IDS_BY_CONTRACT) == []
    assert expected[0].classes == {"matched": 18, "recovered_missing": 2, "recovered_late": 0,
                                   "late_by_disorder": 1, "late_in_flight": 1, "false": 0}
    assert figures(expected, _late_by_contract(_good()))["exactly_once"]["classes"] == expected[0].classes


@pytest.mark.parametrize(("what", "change", "says"), [
    ("its late order not reported", lambda s: s.late.remove("o1-5"), "late orders not on orders.late"),
    ("its row not reconciled", lambda s: s.reconciled.remove("o1-4"), "not reconciled"),
    ("its recovery twice under exactly_once", lambda s: s.recoveries.append(Recovered("p1-4", "o1-4", 3.0, 7_500)),
     "more than once"),
    ("its row missing", lambda s: s.rows.pop("o1-4"), "without a row"),
])
def test_a_recovery_late_by_the_contract_is_held_to_every_promise_of_a_due_one(what: str, change, says: str) -> None:
    seen = _late_by_contract(_good())
    change(seen)
    found = violations(_by_contract({"p1-4": 7_000, "p1-5": 7_000}), seen, outages=OUTAGE,
                       recovery_ids=IDS_BY_CONTRACT)
    assert any(says in line for line in found), f"{what}: caught as {found}"


def test_a_false_recovery_is_reported_with_its_evidence_and_its_late_order_as_invented() -> None:
    seen = _good()
    seen.recoveries.append(Recovered("p1-6", "o1-6", 9.0, 15_000))
    seen.late.append("o1-6")
    found = violations(_by_contract({"p1-6": 15_000}), seen, outages=OUTAGE, recovery_ids=IDS_BY_CONTRACT)
    false = next(line for line in found if line.startswith("false recovery: 1 payments"))
    for evidence in ("p1-6", "deadline 5000", "recovered_at 15000", "partition 1 offset 12", "stamped 4000",
                     "P 5500", "acked 3000"):
        assert evidence in false, (evidence, false)
    assert any("1 orders reported late that were not" in line for line in found), found


def test_an_order_reported_late_whose_payment_was_never_recovered_is_invented() -> None:
    seen = _good()
    seen.late.append("o1-4")
    found = violations(_by_contract({}), seen, outages=OUTAGE, recovery_ids=IDS)
    assert any("1 orders reported late that were not" in line for line in found), found


def test_a_runs_recovered_payments_are_placed_by_its_delivery_reports_and_classified() -> None:
    """Run.classify's wiring, without a cluster: two groups' segments, a recovery of each
    kind; detected_at of the first recovery when there are several."""
    from types import SimpleNamespace

    from streams.tools.loadgen import Expected
    from tests.cluster.deliveries import Deliveries, Segment
    from tests.cluster.harness import Run

    t0 = int(time.time()) * 1000 - 10_000  # (deadlines 5 s ago: the orders are acknowledged after them)
    d = Deliveries("eos.orders", 4, t0)
    for offset, (i, ts) in enumerate([(3, t0 + 20), (0, t0 + 9_000), (1, t0 + 9_100), (2, t0 + 10)]):
        d(None, _Msg(f"o40-{i}".encode(), offset, ts))
    run = Run.__new__(Run)
    run.traffic = {"exactly_once": [SimpleNamespace(exp=Expected(recovered={"p40-9"}, matched=4))],
                   "at_least_once": [SimpleNamespace(exp=Expected())]}
    run.seeds = {"exactly_once": {40}, "at_least_once": {41}}
    run.segments = {"exactly_once": [Segment(40, t0, 1.0, d)], "at_least_once": []}
    run.settings = {g: SimpleNamespace(order_timeout=5_000, grace=1_000, join_group=f"{g}-join")  # type: ignore[misc]
                    for g in run.traffic}
    acked = {i: d.landed(i)[3] for i in range(4)}  # type: ignore[index]
    seen = Observed(recoveries=[
        Recovered("p40-1", "o40-1", 1.0, t0 + 7_000), Recovered("p40-1", "o40-1", 1.0, acked[1] + 60_000),
        Recovered("p40-2", "o40-2", 1.0, t0 + 9_500), Recovered("p40-3", "o40-3", 1.0, acked[3] + 10_000),
        Recovered("p40-9", "o40-9", 1.0, t0 + 9_500)])
    classified, notes = run.classify(seen)
    eos = classified["exactly_once"]
    assert eos.counts == {"matched": 1, "recovered_missing": 1, "recovered_late": 0, "late_by_disorder": 1,
                          "late_in_flight": 1, "false": 1}, eos.false
    assert eos.also_recovered == {"p40-1": "o40-1", "p40-2": "o40-2"} and list(eos.false) == ["p40-3"]
    assert classified["at_least_once"].counts["false"] == 0
    assert notes["exactly_once"] == {"orders_records_unaccounted": 0, "order_reports_failed": 0}
    due = by_contract(run.expected()[0], eos)
    assert due.recovered == {"p40-9": "o40-9", "p40-1": "o40-1", "p40-2": "o40-2"} and due.late == {"o40-1", "o40-2"}


class _Msg:
    def __init__(self, key: bytes, offset: int, ts: int) -> None:
        self._k, self._o, self._ts = key, offset, ts

    def topic(self) -> str:
        return "eos.orders"

    def key(self) -> bytes:
        return self._k

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return 1, self._ts


def test_a_failed_check_prints_each_process_s_own_lines_not_librdkafka_s() -> None:
    """The cut-off test's failure in CI printed 1,500 characters of each log: 8 lines of
    the worker's own among librdkafka's, none from its last three minutes."""
    from tests.cluster.harness import _own_lines

    log = "\n".join(["2026 INFO a", *[f"%6|1|FAIL|x| [thrd:1]: disconnected {i}" for i in range(500)], "2026 INFO b"])
    assert _own_lines(log) == "2026 INFO a\n2026 INFO b"
    assert _own_lines("\n".join(f"line {i}" for i in range(100)), 3) == "line 97\nline 98\nline 99"
