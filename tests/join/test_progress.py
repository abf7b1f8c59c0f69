"""When an end of partition counts after a broker outage (pure: librdkafka's statistics
as they look before, during and after a broker kill -9, recorded on the local broker)."""

from __future__ import annotations

from confluent_kafka import KafkaError

from streams.join.core import JoinParams, PartitionJoin, Side
from streams.join.merge import Pair, hold
from streams.join.progress import EndWatch

TOPICS = ("payments", "orders")


def _stats(leader: int = 1, state: str = "UP", disconnects: int = 0, brokers: bool = True,
           waiting: int = 0, rxidle_s: float = 0.4, txidle_s: float | None = None) -> dict:
    """The parts of a statistics report EndWatch reads: during an outage librdkafka drops
    the broker, keeps a bootstrap stand-in (nodeid -1), and the partitions' broker is -1."""
    listed = {"127.0.0.1:9092/bootstrap": {"nodeid": -1, "state": "INIT", "disconnects": 0}}
    if brokers:
        listed["127.0.0.1:9092/1"] = {"nodeid": 1, "state": state, "disconnects": disconnects,
                                      "waitresp_cnt": waiting, "rxidle": int(rxidle_s * 1e6),
                                      "txidle": int((rxidle_s if txidle_s is None else txidle_s) * 1e6)}
    partitions = {str(p): {"partition": p, "desired": True, "broker": leader} for p in range(2)}
    partitions["-1"] = {"partition": -1, "desired": False, "broker": -1}
    partitions["5"] = {"partition": 5, "desired": False, "broker": -1}  # known, not ours
    return {"brokers": listed, "topics": {t: {"partitions": partitions} for t in TOPICS}}


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ends_count_while_the_leaders_stay_up() -> None:
    clock = _Clock()
    watch = EndWatch(TOPICS, settle_s=10, clock=clock)
    for _ in range(3):
        watch.observe(_stats())
    assert watch.trusts(0) and watch.settled


def test_an_end_seen_before_an_outage_never_counts_again_and_new_ones_wait_for_the_settle_time() -> None:
    clock = _Clock()
    watch = EndWatch(TOPICS, settle_s=10, clock=clock)
    watch.observe(_stats())
    before = watch.epoch
    watch.observe(_stats(leader=-1, brokers=False))  # killed: no leader known
    assert not watch.trusts(before) and not watch.settled
    watch.observe(_stats(leader=-1, brokers=False))
    during = watch.epoch
    assert not watch.trusts(during)
    clock.now += 20
    watch.observe(_stats())  # back
    after = watch.epoch
    assert after == during and not watch.trusts(after), "not before the producers had time to deliver"
    clock.now += 9.9
    watch.observe(_stats())
    assert not watch.trusts(after)
    clock.now += 0.2
    assert watch.trusts(after) and watch.settled
    assert not watch.trusts(before), "an end seen before the outage stays stale"


def test_a_leader_not_connected_or_reconnected_between_two_reports_is_an_outage() -> None:
    clock = _Clock()
    watch = EndWatch(TOPICS, settle_s=0, clock=clock)
    watch.observe(_stats())
    watch.observe(_stats(state="TRY_CONNECT"))
    assert watch.epoch == 1
    watch.observe(_stats(disconnects=0))
    assert watch.trusts(1)
    watch.observe(_stats(disconnects=1))  # dropped and reconnected between two reports
    assert watch.epoch == 2 and not watch.trusts(1)


def test_a_leader_that_stops_answering_is_away_although_connected() -> None:
    """A frozen broker (SIGSTOP, a long GC pause): connections stay up, requests wait."""
    watch = EndWatch(TOPICS, settle_s=0, clock=_Clock())
    watch.observe(_stats(waiting=1, rxidle_s=0.5))  # a fetch waiting within fetch.wait.max.ms
    watch.observe(_stats(waiting=0, rxidle_s=5.0))  # idle, nothing asked: not a sign
    # A fetch just sent after the fetcher idled 3.5 s (its queue was full): not a sign
    # either (seen in the benchmark's backlog drain with rxidle alone).
    watch.observe(_stats(waiting=1, rxidle_s=3.5, txidle_s=0.01))
    assert watch.epoch == 0
    watch.observe(_stats(waiting=2, rxidle_s=3.5))
    assert watch.epoch == 1 and not watch.trusts(0) and not watch.settled
    watch.observe(_stats(waiting=1, rxidle_s=0.1))  # answering again
    assert watch.trusts(1)


def test_brokers_and_partitions_that_are_not_ours_do_not_matter() -> None:
    watch = EndWatch(TOPICS, settle_s=0, clock=_Clock())
    stats = _stats()
    stats["brokers"]["127.0.0.1:9093/2"] = {"nodeid": 2, "state": "DOWN", "disconnects": 7}  # leads nothing of ours
    stats["topics"]["other"] = {"partitions": {"0": {"partition": 0, "desired": True, "broker": -1}}}
    watch.observe(stats)
    stats["brokers"]["127.0.0.1:9093/2"]["disconnects"] = 8
    watch.observe(stats)
    assert watch.epoch == 0 and watch.trusts(0)


class _Msg:
    """What hold() reads of a confluent_kafka.Message (which cannot be built by hand)."""

    def __init__(self, topic: str, offset: int, ts: int = 0, error: KafkaError | None = None) -> None:
        self._topic, self._offset, self._ts, self._error = topic, offset, ts, error

    def error(self) -> KafkaError | None:
        return self._error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return 1, self._ts


def test_hold_notes_each_end_of_partition_with_the_epoch_it_was_seen_in() -> None:
    pair = Pair(PartitionJoin(JoinParams(5_000, 1_000, 60_000)))
    pairs, sides = {0: pair}, {"payments": Side.PAYMENT, "orders": Side.ORDER}
    eof = KafkaError(KafkaError._PARTITION_EOF)
    ts = 1_800_000_000_000
    orders, payments = pair.ends[Side.ORDER], pair.ends[Side.PAYMENT]
    hold(pairs, sides, [_Msg("orders", 7, ts), _Msg("orders", 9, error=eof)], ts + 1, epoch=3)
    assert orders.fetch_end and orders.end_epoch == 3
    assert orders.fetched_to == 9, "the end's offset: past a transaction marker at 8"
    hold(pairs, sides, [_Msg("orders", 9, ts)], ts + 1, epoch=4)
    assert not orders.fetch_end
    hold(pairs, sides, [_Msg("orders", 10, error=eof)], ts + 1, epoch=4)
    assert orders.fetch_end and orders.end_epoch == 4
    assert not payments.fetch_end and payments.end_epoch == -1


def test_hold_counts_records_stamped_more_than_grace_ahead_and_leaves_the_dlq_bound_ones_to_the_dlq() -> None:
    """slipguard_join_records_stamped_ahead_total{topic}: a producer with a fast clock
    shows before a backlog makes it costly (README: bad clocks, forged records)."""
    from streams.ops.metrics import JOIN_STAMPED_AHEAD

    pair = Pair(PartitionJoin(JoinParams(5_000, 1_000, 60_000)))
    pairs, sides = {0: pair}, {"payments": Side.PAYMENT, "orders": Side.ORDER}
    now, grace, max_future = 1_800_000_000_000, 1_000, 3_600_000
    counted = JOIN_STAMPED_AHEAD.labels("orders")
    before = counted._value.get()
    msgs = [_Msg("orders", 0, now), _Msg("orders", 1, now + grace), _Msg("orders", 2, now + grace + 1),
            _Msg("orders", 3, now + max_future), _Msg("orders", 4, now + max_future + 1)]
    hold(pairs, sides, msgs, now + max_future, ahead_ms=now + grace)
    assert counted._value.get() - before == 2, "stamped more than GRACE ahead, but not far enough for the DLQ"
    assert [ts for ts, _m in pair.held[Side.ORDER]] == [now, now + grace, now + grace + 1, now + max_future, -1]
