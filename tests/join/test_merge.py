"""The worker's event-time merge of a pair's two partitions (pure: no broker)."""

from __future__ import annotations

from streams.join.core import Decisions, JoinParams, PartitionJoin, Side
from streams.join.merge import HOLD_MAX_RECORDS, HOLD_MAX_SECONDS, Pair, merge
from streams.ops.metrics import JOIN_HOLD_RELEASED

PAYMENT, ORDER = Side.PAYMENT, Side.ORDER


def _pair() -> Pair:
    return Pair(PartitionJoin(JoinParams(5_000, 1_000, 60_000, None)))


def _hold(pair: Pair, kind: Side, *times: int) -> None:
    pair.held[kind].extend((t, f"{'po'[kind]}{t}") for t in times)


def _run(pair: Pair, now: float, unread: frozenset[Side] = frozenset()) -> list[str]:
    """Merge at `now`; `unread`: the sides the worker would find records left to fetch in."""
    fed: list[str] = []
    merge(pair, lambda _pair, _kind, _ts, m, _out: fed.append(m), Decisions(), now, lambda _pair, side: side in unread)
    return fed


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
    assert _run(pair, HOLD_MAX_SECONDS * 3, frozenset({ORDER})) == [], "the orders partition has records left: wait"
    assert _run(pair, HOLD_MAX_SECONDS * 3, frozenset({PAYMENT})) == ["p10", "p20"], "only the other side's records count"
    _hold(pair, ORDER, *range(1, HOLD_MAX_RECORDS + 2))
    assert len(_run(pair, HOLD_MAX_SECONDS * 4, frozenset({PAYMENT}))) == HOLD_MAX_RECORDS + 1, "too many held: fed ahead"


def test_a_partition_read_to_its_end_does_not_hold_the_other_back() -> None:
    pair = _pair()
    _hold(pair, ORDER, 1, 2)
    assert _run(pair, 0.0) == []
    pair.fetch_end[PAYMENT] = True
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
    pair.fetch_end[PAYMENT] = True
    assert _run(pair, 10.0) == ["o40"]
    assert seconds._value.get() - before == 3, "fed because the other partition was read to its end: not counted"


def test_a_fatal_group_error_is_told_apart_by_what_can_be_done_about_it() -> None:
    """The consumer's fatal errors as librdkafka 2.16 reports them (recorded on the local
    broker): a broker without KIP-848, an instance id still held, anything else."""
    import pytest
    from confluent_kafka import KafkaError

    from streams.join import InstanceHeld, JoinFailed, ProtocolRefused
    from streams.join.core import JoinParams, PartitionJoin, Side
    from streams.join.merge import hold
    from tests.join.test_ends import _Msg

    def hold_error(err: KafkaError) -> None:
        pairs = {0: Pair(PartitionJoin(JoinParams(5_000, 1_000, 60_000, None)))}
        hold(pairs, {"payments": Side.PAYMENT, "orders": Side.ORDER}, [_Msg("payments", 0, error=err)], 0)

    fatal = KafkaError._FATAL
    with pytest.raises(ProtocolRefused):
        hold_error(KafkaError(fatal, "Fatal error: Broker: API version not supported: ConsumerGroupHeartbeat "
                                     "fatal error: Broker: API version not supported", fatal=True))
    with pytest.raises(ProtocolRefused):
        hold_error(KafkaError(KafkaError.UNSUPPORTED_VERSION))
    with pytest.raises(InstanceHeld):
        hold_error(KafkaError(fatal, "Fatal error: Broker: The instance ID is still used by another member in "
                                     "the consumer group", fatal=True))
    with pytest.raises(JoinFailed) as other:
        hold_error(KafkaError(fatal, "Fatal error: Broker: Group authorization failed", fatal=True))
    assert type(other.value) is JoinFailed
