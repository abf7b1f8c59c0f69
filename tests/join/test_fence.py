"""The at_least_once commit's fence (streams/join/fence.py, in checkpoint.Checkpoint's step 2),
without a broker: its bounds fit the group's window, it confirms with offsets already
committed of partitions held and nothing else, and a refused confirmation produces no state.
The real group refusing a frozen member: tests/integration/test_fence.py."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.join.checkpoint import Checkpoint
from streams.join.fence import CLASSIC_WINDOW_S, DELIVERY_MAX_S, PAUSE_S, SCAN_SLACK_S, Bounds
from streams.kafka import config
from streams.settings import load_settings


def _settings(guarantee: str = "at_least_once"):
    return load_settings(bootstrap_servers="127.0.0.1:1", processing_guarantee=guarantee)


class _Consumer:
    """What the checkpoint asks of the worker's consumer here: its assignment, and a
    synchronous commit (recorded; refused with `refusal`)."""

    def __init__(self, held: list[tuple[str, int]], refusal: KafkaError | None = None) -> None:
        self.held, self.refusal, self.commits = held, refusal, []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.held]

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert not asynchronous
        self.commits.append(sorted((tp.topic, tp.partition, tp.offset) for tp in offsets))
        if self.refusal is not None:
            raise KafkaException(self.refusal)


@pytest.mark.parametrize("window_s", [CLASSIC_WINDOW_S, 5.0, 40.0])
def test_the_fence_fits_the_window_of_every_group_the_join_runs_in(window_s: float) -> None:
    """Classic (10 s session, 1 s heartbeat), a KIP-848 group at the local floors (6 s, 1 s)
    and at the broker's defaults (45 s, 5 s): a record produced under a confirmation is
    delivered or failed before the member's session can have expired."""
    bounds = Bounds.within(window_s)
    assert bounds.fits(window_s)
    assert bounds.write_s > 0 and 1.0 <= bounds.delivery_s <= DELIVERY_MAX_S
    assert bounds.write_s + bounds.delivery_s + SCAN_SLACK_S < window_s


def test_the_at_least_once_producer_is_given_the_fences_delivery_bound_and_exactly_once_is_not(caplog) -> None:
    cp = Checkpoint(_settings(), lambda: None, lambda: False)  # type: ignore[arg-type,return-value]
    assert CLASSIC_WINDOW_S == (config.SESSION_TIMEOUT_MS - config.HEARTBEAT_INTERVAL_MS) / 1000
    assert cp.out.conf["message.timeout.ms"] == int(Bounds.within(CLASSIC_WINDOW_S).delivery_s * 1000)
    cp.bound(5.0)  # the group's own timeouts, once joined
    assert cp.out.conf["message.timeout.ms"] == int(Bounds.within(5.0).delivery_s * 1000)
    assert "too short" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="slipguard.join"):
        cp.bound(3.0)
    assert "too short to fence" in caplog.text, "a window it cannot fit is said, in one line"
    cp.out.producer.flush(0)
    eos = Checkpoint(_settings("exactly_once"), lambda: None, lambda: False)  # type: ignore[arg-type,return-value]
    assert "message.timeout.ms" not in eos.out.conf, "exactly_once: the transaction fences it"


def test_a_confirmation_commits_offsets_already_committed_of_partitions_held_only() -> None:
    cp = Checkpoint(_settings(), lambda: None, lambda: False)  # type: ignore[arg-type,return-value]
    cp.remember([TopicPartition("payments", 0, 7), TopicPartition("orders", 0, 9), TopicPartition("payments", 1, 3),
                 TopicPartition("orders", 1, -1001), TopicPartition("payments", 2, -1001)])
    held = _Consumer([("payments", 0), ("orders", 0), ("payments", 1), ("orders", 1), ("payments", 2)])
    assert cp.fence._probe(held) == [TopicPartition("orders", 0, 9), TopicPartition("payments", 0, 7),
                               TopicPartition("payments", 1, 3)], "none committed: left out while others are"
    cp.release([0])
    assert cp.fence._probe(held) == [TopicPartition("payments", 1, 3)], "handed over: never committed again (nor back)"
    assert cp.fence._probe(_Consumer([("payments", 0), ("payments", 1)])) == [TopicPartition("payments", 1, 3)]
    assert cp.fence._probe(_Consumer([("orders", 1), ("payments", 2)])) == [TopicPartition("orders", 1, 0)], \
        "none committed on any: 0, where a member with none reads from anyway (auto.offset.reset=earliest)"
    with pytest.raises(KafkaException):
        cp.fence._probe(_Consumer([("payments", 5)]))  # held but not taken in yet: nothing known to confirm with


def test_a_refused_confirmation_writes_no_state_and_the_work_is_read_again(caplog) -> None:
    """UNKNOWN_MEMBER_ID (what the coordinator answers a member whose session expired):
    the commit fails before any changelog record is produced."""
    consumer = _Consumer([("payments", 0)], KafkaError(KafkaError.UNKNOWN_MEMBER_ID, "Broker: Unknown member"))
    cp = Checkpoint(_settings(), lambda: consumer, lambda: False)  # type: ignore[arg-type,return-value]
    cp.remember([TopicPartition("payments", 0, 4)])
    cp.store_offset("payments", 0, 6)
    with caplog.at_level(logging.WARNING, logger="slipguard.join"):
        assert not cp.commit(lambda: [(0, b"o1", b"pending")])
    assert len(cp.out.producer) == 0, "nothing produced to the changelog"
    assert consumer.commits == [[("payments", 0, 4)]], "the confirmation alone: the offsets are not committed"
    assert "membership not confirmed, no state written" in caplog.text
    assert cp.offsets == {} and not cp.has_work, "forgotten: the worker reads the work again (_rewind)"
    consumer.refusal = None
    cp.store_offset("payments", 0, 6)
    assert cp.commit(list), "nothing to write: no confirmation, the offsets commit as before"
    assert consumer.commits[1:] == [[("payments", 0, 6)]]
    assert cp.fence.committed == {("payments", 0): 6}, "remembered for the next confirmation"


def test_a_record_produced_after_a_pause_past_the_confirmation_fails_the_commit_and_is_purged(caplog) -> None:
    """The process paused between the fence's check and a produce (a stop-the-world pause,
    SIGSTOP): that record would be delivered a full delivery bound after it, past the
    window. It is purged from the queue before librdkafka sends it, and the commit fails."""
    consumer = _Consumer([("payments", 0)])
    cp = Checkpoint(_settings(), lambda: consumer, lambda: False)  # type: ignore[arg-type,return-value]
    cp.bound(3.5)  # write_s 0.2 s: a short pause is enough here
    cp.remember([TopicPartition("payments", 0, 4)])
    offer, calls = cp.out.offer, []

    def paused_offer(*args) -> bool:
        calls.append(args)
        if len(calls) == 2:
            time.sleep(cp.fence.bounds.write_s + PAUSE_S + 0.1)
        return offer(*args)

    cp.out.offer = paused_offer  # type: ignore[method-assign]
    cp.store_offset("payments", 0, 6)
    with caplog.at_level(logging.WARNING, logger="slipguard.join"):
        assert not cp.commit(lambda: [(0, b"o1", b"pending"), (0, b"o2", b"pending"), (0, b"o3", b"pending")])
    assert len(calls) == 2, "nothing produced after the pause was noticed"
    served = time.monotonic() + 10  # every delivery report served (the purge's come when polled)
    while len(cp.out.producer) and time.monotonic() < served:
        cp.out.producer.poll(0.1)
    assert len(cp.out.producer) == 0
    assert "delivery to" not in caplog.text, "what was queued is purged, not left to time out: nothing is sent"
    assert consumer.commits == [[("payments", 0, 4)]], "confirmed once; the offsets are not committed"
    assert "paused while writing its state" in caplog.text
