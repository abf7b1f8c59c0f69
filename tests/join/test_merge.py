"""The worker's event-time merge of a pair's two partitions (pure: no broker)."""

from __future__ import annotations

from confluent_kafka import KafkaError

from streams.join.core import Decisions, JoinParams, PartitionJoin, Side
from streams.join.merge import HOLD_MAX_RECORDS, HOLD_MAX_SECONDS, MIN_EVENT_MS, Pair, hold, merge
from streams.ops.metrics import JOIN_HOLD_RELEASED

PAYMENT, ORDER = Side.PAYMENT, Side.ORDER


def _pair() -> Pair:
    return Pair(PartitionJoin(JoinParams(5_000, 1_000, 60_000)))


def _hold(pair: Pair, kind: Side, *times: int) -> None:
    pair.held[kind].extend((t, f"{'po'[kind]}{t}") for t in times)


def _run(pair: Pair, now: float, unread: frozenset[Side] = frozenset()) -> list[str]:
    """Merge at `now`; `unread`: the sides the worker would find records left to fetch in."""
    return [m for _side, _ts, m in merge(pair, now, lambda _partition, side, _fetched_to: side in unread)]


def test_records_of_both_partitions_are_fed_in_event_time_order() -> None:
    pair = _pair()
    _hold(pair, PAYMENT, 1, 4, 6)
    _hold(pair, ORDER, 2, 3, 5)
    assert _run(pair, 0.0) == ["p1", "o2", "o3", "p4", "o5"]  # p6 waits for an order at least as late
    assert list(pair.held[PAYMENT]) == [(6, "p6")]


def test_a_partition_ahead_waits_for_the_other_and_the_wait_restarts_with_each_delivery() -> None:
    pair = _pair()
    _hold(pair, PAYMENT, *range(10, 100, 10))
    assert _run(pair, 0.0) == []
    _hold(pair, ORDER, 15)
    assert _run(pair, 4.0) == ["p10", "o15"]  # the orders partition delivered at 4 s
    # 6 s after the first hold but only 2 s after the last delivery: still waiting.
    assert _run(pair, 6.0) == []
    assert _run(pair, 4.0 + HOLD_MAX_SECONDS + 0.1) == [f"p{t}" for t in range(20, 100, 10)]
    assert pair.holding_since is None


def test_a_partition_with_records_left_to_fetch_is_waited_for_past_the_time_limit_up_to_the_size_limit() -> None:
    """librdkafka can leave one partition unfetched for seconds in a backlog (issue 1854):
    its pair's records keep waiting while its high watermark says records are left, so
    they do not become pending state; the size limit still bounds the wait."""
    pair = _pair()
    _hold(pair, PAYMENT, 10, 20)
    assert _run(pair, 0.0, frozenset({ORDER})) == []
    assert _run(pair, HOLD_MAX_SECONDS * 3, frozenset({ORDER})) == [], \
        "the orders partition has records left: wait"
    assert _run(pair, HOLD_MAX_SECONDS * 3, frozenset({PAYMENT})) == ["p10", "p20"], \
        "only the other side's records count"
    _hold(pair, ORDER, *range(1, HOLD_MAX_RECORDS + 2))
    assert len(_run(pair, HOLD_MAX_SECONDS * 4, frozenset({PAYMENT}))) == HOLD_MAX_RECORDS + 1, \
        "too many held: fed ahead"


def test_a_partition_read_to_its_end_does_not_hold_the_other_back() -> None:
    pair = _pair()
    _hold(pair, ORDER, 1, 2)
    assert _run(pair, 0.0) == []
    pair.ends[PAYMENT].fetch_end = True
    assert _run(pair, 0.1) == ["o1", "o2"]


def test_records_released_by_a_hold_limit_are_counted_and_those_fed_at_the_others_end_are_not() -> None:
    """slipguard_join_hold_released_total: what went ahead of its pair's other partition
    (it becomes pending state), for the operator and the bench."""
    seconds = JOIN_HOLD_RELEASED.labels("seconds")
    before = seconds._value.get()
    pair = _pair()
    _hold(pair, PAYMENT, 10, 20, 30)
    assert _run(pair, 0.0) == []
    assert _run(pair, HOLD_MAX_SECONDS + 0.1) == ["p10", "p20", "p30"]
    assert seconds._value.get() - before == 3
    _hold(pair, ORDER, 40)
    pair.ends[PAYMENT].fetch_end = True
    assert _run(pair, 10.0) == ["o40"]
    assert seconds._value.get() - before == 3, "fed because the other partition was read to its end: not counted"


def test_one_order_from_a_fast_clock_in_a_backlog_recovers_no_payment_whose_order_is_merely_unread() -> None:
    """A backlog hours old (the wall clock is past every deadline) through merge and the
    core, fetched the way a lagging orders partition is: 300 payments and 150 orders per
    batch. Every payment's order exists, 1 s after it; one order near the start is
    stamped 30 minutes ahead."""
    from tests.factories import order as order_model
    from tests.factories import payment as payment_model
    from tests.join.harness import BASE, at

    n, batch = 3_000, 300
    pays = [(BASE + i * 10, payment_model(payment_id=f"p{i}", order_id=f"o{i}", paid_at=at(BASE + i * 10)))
            for i in range(n)]
    ords = [(BASE + i * 10 + 1_000, order_model(order_id=f"o{i}", created_at=at(BASE + i * 10 + 1_000)))
            for i in range(n)]
    ords.insert(5, (BASE + 30 * 60_000, order_model(order_id="skewed", created_at=at(BASE + 30 * 60_000))))
    pair = Pair(PartitionJoin(JoinParams(60_000, 5_000, 3_600_000)))

    def feed(pair: Pair, side: Side, ts: int, rec, out: Decisions) -> None:
        (pair.core.on_payment if side == PAYMENT else pair.core.on_order)(ts, rec, rec.encode(), out)

    recovered: list[str] = []
    ip = io = 0
    now = BASE + 10 * 3_600_000
    while ip < len(pays) or io < len(ords):
        pair.held[PAYMENT].extend(pays[ip:ip + batch])
        pair.held[ORDER].extend(ords[io:io + batch // 2])
        ip, io = ip + batch, io + batch // 2
        pair.ends[PAYMENT].fetch_end, pair.ends[ORDER].fetch_end = ip >= len(pays), io >= len(ords)
        out = Decisions()

        def unread(_partition: int, side: Side, _fetched_to: int, ip: int = ip, io: int = io) -> bool:  # this round's
            return ip < len(pays) if side == PAYMENT else io < len(ords)

        for side, ts, rec in merge(pair, 0.0, unread):
            feed(pair, side, ts, rec, out)
        pair.core.advance(now, pair.ends[PAYMENT].fetch_end and not pair.held[PAYMENT],
                          pair.ends[ORDER].fetch_end and not pair.held[ORDER], out)
        recovered += [r.payment.payment_id for r in out.recoveries]
    assert recovered == [], f"{len(recovered)} of {n} payments recovered while their orders were unread"


class _Msg:
    """What hold() reads of a confluent_kafka.Message (which cannot be built by hand)."""

    def __init__(self, topic: str, partition: int, offset: int, ts: int = 0, error: KafkaError | None = None) -> None:
        self._topic, self._partition, self._offset, self._ts, self._error = topic, partition, offset, ts, error

    def error(self) -> KafkaError | None:
        return self._error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return 1, self._ts


SIDES = {"payments": PAYMENT, "orders": ORDER}
NOW = 1_800_000_000_000


def test_hold_counts_what_it_holds_per_side_and_skips_partitions_and_topics_it_does_not_hold() -> None:
    """A record or an end of a partition revoked meanwhile (its next owner reads it again),
    or of another topic, is passed over; the records after it are held."""
    pair = _pair()
    eof = KafkaError(KafkaError._PARTITION_EOF)
    msgs = [_Msg("orders", 0, 0, NOW), _Msg("payments", 1, 0, NOW), _Msg("payments", 1, 1, error=eof),
            _Msg("elsewhere", 0, 0, error=eof), _Msg("orders", 0, 1, NOW + 1), _Msg("payments", 0, 0, NOW + 2)]
    counts, errors = hold({0: pair}, SIDES, msgs, NOW + 10, epoch=0)
    assert counts == [1, 2] and errors == []
    assert [(ts, m.offset()) for ts, m in pair.held[ORDER]] == [(NOW, 0), (NOW + 1, 1)]
    assert [(ts, m.offset()) for ts, m in pair.held[PAYMENT]] == [(NOW + 2, 0)]
    assert not pair.ends[PAYMENT].fetch_end and not pair.ends[ORDER].fetch_end


def test_a_record_stamped_on_2000_01_01_is_held_with_its_time_and_one_a_millisecond_earlier_goes_to_the_dlq() -> None:
    pair = _pair()
    hold({0: pair}, SIDES, [_Msg("orders", 0, 0, MIN_EVENT_MS), _Msg("orders", 0, 1, MIN_EVENT_MS - 1)], NOW, epoch=0)
    assert [ts for ts, _m in pair.held[ORDER]] == [MIN_EVENT_MS, -1]


def test_a_partition_holds_up_to_exactly_the_limits_and_a_release_by_time_is_counted_as_such() -> None:
    seconds, records = JOIN_HOLD_RELEASED.labels("seconds"), JOIN_HOLD_RELEASED.labels("records")
    before = seconds._value.get(), records._value.get()
    pair = _pair()
    pair.held[PAYMENT].extend((t, "p") for t in range(HOLD_MAX_RECORDS))
    assert _run(pair, 0.0) == [], "HOLD_MAX_RECORDS held: still waiting"
    assert _run(pair, HOLD_MAX_SECONDS) == [], f"{HOLD_MAX_SECONDS} s: still waiting"
    assert len(_run(pair, HOLD_MAX_SECONDS + 0.001)) == HOLD_MAX_RECORDS
    assert (seconds._value.get() - before[0], records._value.get() - before[1]) == (HOLD_MAX_RECORDS, 0)


def test_records_released_because_too_many_are_held_are_counted_as_such() -> None:
    seconds, records = JOIN_HOLD_RELEASED.labels("seconds"), JOIN_HOLD_RELEASED.labels("records")
    before = seconds._value.get(), records._value.get()
    pair = _pair()
    pair.held[ORDER].extend((t, "o") for t in range(HOLD_MAX_RECORDS + 1))
    assert len(_run(pair, 0.0, frozenset({PAYMENT}))) == HOLD_MAX_RECORDS + 1
    assert (seconds._value.get() - before[0], records._value.get() - before[1]) == (0, HOLD_MAX_RECORDS + 1)


def test_whether_records_are_left_to_fetch_is_asked_of_the_pairs_other_partition() -> None:
    """As the worker asks it: the partition's fetch position against its high watermark (10)."""
    pair = _pair()
    _hold(pair, PAYMENT, 10)

    def unread(partition: int, side: Side, fetched_to: int) -> bool:
        assert partition == pair.partition and fetched_to == pair.ends[side].fetched_to
        return fetched_to < 10

    pair.ends[ORDER].fetched_to = 9
    assert [m for _s, _t, m in merge(pair, 0.0, unread)] == []
    assert [m for _s, _t, m in merge(pair, HOLD_MAX_SECONDS + 1, unread)] == [], "the orders partition has one left"
    pair.ends[ORDER].fetched_to = 10
    assert [m for _s, _t, m in merge(pair, HOLD_MAX_SECONDS + 1, unread)] == ["p10"]


def test_a_pair_with_nothing_held_yields_nothing_and_a_wait_starts_with_its_next_record() -> None:
    pair = _pair()
    assert _run(pair, 0.0) == [] and pair.holding_since is None
    _hold(pair, PAYMENT, 10)
    assert _run(pair, 1.0) == []
    assert _run(pair, 1.0 + HOLD_MAX_SECONDS) == [], "waiting since 1 s, not since the empty merge"
    assert _run(pair, 1.1 + HOLD_MAX_SECONDS) == ["p10"]
