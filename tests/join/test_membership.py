"""What a consumer error means for the join worker (streams/join/membership.py; pure)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from streams.join import Denied, InstanceHeld, JoinFailed, ProtocolRefused
from streams.join.core import JoinParams, PartitionJoin, Side
from streams.join.membership import consumer_error, raise_for
from streams.join.merge import Pair, hold
from tests.join.test_progress import _Msg


def _hold(*msgs: _Msg) -> tuple[Pair, list]:
    pair = Pair(PartitionJoin(JoinParams(5_000, 1_000, 60_000)))
    _counts, errors = hold({0: pair}, {"payments": Side.PAYMENT, "orders": Side.ORDER}, list(msgs), 2**62, epoch=0)
    return pair, errors


def test_a_fatal_group_error_is_told_apart_by_what_can_be_done_about_it() -> None:
    """The consumer's fatal errors as librdkafka 2.16 reports them (recorded on the local
    broker): a broker without KIP-848, an instance id still held, anything else."""
    def hold_error(err: KafkaError) -> None:
        raise_for(_hold(_Msg("payments", 0, error=err))[1])

    fatal = KafkaError._FATAL
    with pytest.raises(ProtocolRefused):
        hold_error(KafkaError(fatal, "Fatal error: Broker: API version not supported: ConsumerGroupHeartbeat "
                                     "fatal error: Broker: API version not supported", fatal=True))
    with pytest.raises(ProtocolRefused):
        hold_error(KafkaError(KafkaError.UNSUPPORTED_VERSION))
    with pytest.raises(InstanceHeld):
        hold_error(KafkaError(fatal, "Fatal error: Broker: The instance ID is still used by another member in "
                                     "the consumer group", fatal=True))
    with pytest.raises(InstanceHeld):
        hold_error(KafkaError(KafkaError.UNRELEASED_INSTANCE_ID))
    with pytest.raises(JoinFailed) as other:
        hold_error(KafkaError(fatal, "Fatal error: Broker: Group authorization failed", fatal=True))
    assert type(other.value) is JoinFailed
    with pytest.raises(Denied) as topic:
        hold_error(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert (topic.value.resource, topic.value.name) == ("TOPIC", "payments")
    with pytest.raises(Denied) as group:
        hold_error(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))
    assert (group.value.resource, group.value.name) == ("GROUP", None)


def test_a_passing_error_is_only_logged_and_the_rest_of_the_batch_is_held() -> None:
    ts = 1_800_000_000_000
    transient = _Msg("orders", 0, error=KafkaError(KafkaError._TRANSPORT))
    eof = _Msg("payments", 3, error=KafkaError(KafkaError._PARTITION_EOF))
    pair, errors = _hold(_Msg("orders", 1, ts), transient, eof, _Msg("orders", 2, ts + 1), _Msg("elsewhere", 5, ts))
    assert [e.error().code() for e in errors] == [KafkaError._TRANSPORT], "an end of partition is not an error"
    assert consumer_error(transient.error(), "orders") is None
    raise_for(errors)  # nothing raised: the consumer retries by itself
    assert [ts_ for ts_, _m in pair.held[Side.ORDER]] == [ts, ts + 1], "records after an error are held too"
    assert pair.ends[Side.PAYMENT].fetch_end and not pair.ends[Side.ORDER].fetch_end
