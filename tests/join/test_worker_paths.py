"""The worker's own callbacks into the record path, on both cores (no broker: the consumer
is a stand-in answering what librdkafka's cached watermarks would).

A pair that holds records past HOLD_MAX_SECONDS asks the worker whether the other
partition has records left to fetch (JoinWorker._unread). The native pipeline is borrowed
for the whole merge, so a callback that asked it anything back (as _unread once asked
fetched_to) was refused: RuntimeError "Already mutably borrowed", the worker dead, on every
restart while a partition's other half was not yet fetched or its leader away."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import Message

from streams.join import native
from streams.join.core import JoinParams, PartitionJoin
from streams.join.merge import HOLD_MAX_SECONDS
from streams.join.native import NATIVE, NativePipeline
from streams.join.pipeline import Pipeline
from streams.join.worker import JoinWorker
from streams.settings import load_settings
from tests.factories import payment
from tests.join.fuzz import Recorder
from tests.join.harness import BASE, at


class _Consumer:
    """librdkafka's cached high watermark of each (topic, partition): -1 before a fetch."""

    def __init__(self, high: int) -> None:
        self.high, self.asked = high, []

    def get_watermark_offsets(self, tp, cached: bool = False) -> tuple[int, int]:
        self.asked.append((tp.topic, tp.partition, cached))
        return 0, self.high


CORES = ["python"] + (["native"] if NATIVE is not None else [])


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("high", [-1, 0, 3])
def test_a_pair_held_past_the_limit_asks_the_worker_and_the_worker_answers_from_the_consumer(core: str,
                                                                                              high: int) -> None:
    s = load_settings(bootstrap_servers="127.0.0.1:1")
    params = JoinParams(s.order_timeout, s.grace, s.late_horizon, s.hmac_keys)
    pipe: Pipeline | NativePipeline
    if core == "native":
        pipe = NativePipeline(s, params, Recorder())
        pipe.install({0: native.new_core(params)})
    else:
        pipe = Pipeline(s, params, Recorder())
        pipe.install({0: PartitionJoin(params)})
    consumer = _Consumer(high)
    worker = SimpleNamespace(consumer=consumer, topic_of=(s.payments_topic, s.orders_topic), pipeline=pipe)

    def unread(partition: int, side, fetched_to: int) -> bool:
        return JoinWorker._unread(worker, partition, side, fetched_to)  # type: ignore[arg-type]

    value = payment(order_id="o1", paid_at=at(BASE)).encode()
    pipe.take([Message(topic=s.payments_topic, partition=0, offset=0, key=b"o1", value=value,
                       timestamp=(1, BASE))], BASE, 0)
    pipe.advance(pipe.merge(100.0, lambda _epoch: True, unread), BASE)
    assert consumer.asked == [] and pipe.held_count() == 1, "held, nothing asked yet: the orders have not come"
    pipe.advance(pipe.merge(100.0 + HOLD_MAX_SECONDS + 0.1, lambda _epoch: True, unread), BASE)
    assert consumer.asked == [(s.orders_topic, 0, True)], "past the limit: the consumer's cached watermark"
    left = high < 0 or high > 0  # not fetched since assigned, or records past offset 0
    assert pipe.held_count() == (1 if left else 0), "held while orders are left to fetch, else fed"
    assert pipe.fed == (0 if left else 1)
