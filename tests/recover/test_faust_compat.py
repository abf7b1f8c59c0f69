"""The faust and aiokafka internals the writer overrides are still there, in the versions
it was written for: an upgrade that removes one fails here, not in production."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record import default_records
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from mode.services import Service

from streams.recover import faust_compat


def test_every_overridden_internal_exists() -> None:
    assert faust_compat.missing() == []


def test_the_installed_versions_are_those_the_overrides_were_written_for() -> None:
    assert faust_compat.unexpected_versions() == {}, (
        "faust-streaming or aiokafka changed: check streams/recover/faust_compat.py against the new version, "
        "then update WRITTEN_FOR and the pins in pyproject.toml")


def test_the_writer_app_reads_with_the_read_committed_consumer() -> None:
    """What the overrides are for: the app `slipguard recover` runs builds its consumers
    through them (nothing connects here)."""
    from streams.recover.app import build_app
    from streams.settings import load_settings

    app, _ = build_app(load_settings())
    assert app.transport.Consumer is faust_compat._ReadCommittedConsumer


# ---------------------------------------------------------------- the fetch loop's hand-over
# faust hands each record to the streams with
# `wait_first(callback(message), self.suspend_flow.wait())`; the writer's consumer takes the
# callback's first step in place. Each case runs that call through the override and through
# mode's own wait_first, and both must give the same results, errors and callback effects.


def _consumer() -> Any:
    from streams.recover.app import build_app
    from streams.settings import load_settings

    app, _ = build_app(load_settings())
    return app.consumer  # nothing connects until it is started


Case = Callable[[list, asyncio.Future], Awaitable[Any]]


async def _returns(log: list, gate: asyncio.Future) -> str:
    log.append("ran")
    return "delivered"


async def _raises(log: list, gate: asyncio.Future) -> str:
    log.append("ran")
    raise ValueError("undecodable")


async def _blocks_then_returns(log: list, gate: asyncio.Future) -> str:
    log.append("waits")
    log.append(await gate)
    return "delivered"


async def _blocks_then_raises(log: list, gate: asyncio.Future) -> str:
    log.append("waits")
    await gate
    return "unreachable"


async def _yields_then_returns(log: list, gate: asyncio.Future) -> str:
    for n in range(3):
        await asyncio.sleep(0)
        log.append(n)
    return "delivered"


async def _blocks_until_suspended(log: list, gate: asyncio.Future, reraise: bool = True) -> str:
    log.append("waits")
    try:
        await gate
    except asyncio.CancelledError:
        log.append("cancelled")
        if reraise:
            raise
    return "after the cancel"


# case, what happens to the gate after 10 ms: ("result", v), ("error", exc) or ("suspend",)
CASES: dict[str, tuple[Case, tuple]] = {
    "returns at once": (_returns, ("result", "room")),
    "raises at once": (_raises, ("result", "room")),
    "blocks, then returns": (_blocks_then_returns, ("result", "room")),
    "blocks, then raises": (_blocks_then_raises, ("error", RuntimeError("queue closed"))),
    "yields to the loop, then returns": (_yields_then_returns, ("result", "room")),
    "blocks until the flow is suspended": (_blocks_until_suspended, ("suspend",)),
    "blocks, is suspended and returns anyway": (functools.partial(_blocks_until_suspended, reraise=False),
                                                ("suspend",)),
}


async def _hand_over(wait_first: Callable[..., Awaitable[Any]], consumer: Any, case: Case, then: tuple) -> dict:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future = loop.create_future()
    log: list = []
    if then[0] == "result":
        loop.call_later(0.01, gate.set_result, then[1])
    elif then[0] == "error":
        loop.call_later(0.01, gate.set_exception, then[1])
    else:
        loop.call_later(0.01, consumer.suspend_flow.set)
    outcome: dict[str, Any] = {}
    try:
        got = await wait_first(consumer, case(log, gate), consumer.suspend_flow.wait())
        outcome["results"] = got.results
        outcome["stopped"] = got.stopped
    except Exception as exc:  # noqa: BLE001 (compared below)
        outcome["error"] = repr(exc)
    for _ in range(5):  # a cancelled callback's handler runs at its task's next step
        await asyncio.sleep(0)
    outcome["log"] = log
    consumer.suspend_flow.clear()
    return outcome


@pytest.mark.parametrize("name", list(CASES))
def test_the_fetch_loops_hand_over_gives_what_modes_wait_first_gives(name: str) -> None:
    case, then = CASES[name]

    async def both() -> tuple[dict, dict]:
        consumer = _consumer()
        ours = await _hand_over(type(consumer).wait_first, consumer, case, then)
        modes = await _hand_over(Service.wait_first, consumer, case, then)
        return ours, modes

    ours, modes = asyncio.run(both())
    assert ours == modes
    assert ours["log"], "the callback ran"


def _where_deliveries_run(body: Callable[..., Awaitable[None]]) -> None:
    """Run `body(consumer, here, ran_in, deliver)` in an event loop: `deliver()` makes a
    callback that notes in `ran_in` the task it runs in; `here` is the caller's task."""
    async def run() -> None:
        ran_in: list = []

        async def deliver() -> str:
            ran_in.append(asyncio.current_task())
            return "delivered"

        await body(_consumer(), asyncio.current_task(), ran_in, deliver)

    asyncio.run(run())


def test_a_callback_that_does_not_block_is_delivered_in_place_without_a_task() -> None:
    async def body(consumer: Any, here: asyncio.Task, ran_in: list, deliver: Callable) -> None:
        suspended = consumer.suspend_flow.wait()
        got = await consumer.wait_first(deliver(), suspended)
        assert got.results == ["delivered"] and not got.stopped
        assert ran_in == [here]  # mode's wait_first runs it in a task of its own
        assert suspended.cr_frame is None  # closed, never left unawaited

        ran_in.clear()
        await Service.wait_first(consumer, deliver(), consumer.suspend_flow.wait())
        assert ran_in and ran_in[0] is not here

    _where_deliveries_run(body)


def test_other_calls_and_a_suspended_flow_go_to_modes_wait_first() -> None:
    async def body(consumer: Any, here: asyncio.Task, ran_in: list, deliver: Callable) -> None:
        other = asyncio.Event()
        other.set()
        await consumer.wait_first(deliver(), other.wait())  # not the fetch loop's call
        consumer.suspend_flow.set()
        await consumer.wait_first(deliver(), consumer.suspend_flow.wait())
        assert len(ran_in) == 2 and here not in ran_in

    _where_deliveries_run(body)


# ---------------------------------------------------------------- a header name that is not UTF-8
# aiokafka decodes header names strictly while it unpacks a fetched batch: one such name
# raised out of the fetch and crashed the writer. The lenient reader reads such a batch
# whole, the name surrogate-escaped (tests/integration/test_writer_unreadable.py: on the broker).

ESCAPED = faust_compat.UNREADABLE_NAME.decode("utf-8", "surrogateescape")
CODECS = {"uncompressed": 0, "gzip": 1, "lz4": 3}


@pytest.mark.parametrize("codec", list(CODECS))
def test_aiokafkas_own_reader_refuses_a_batch_with_a_header_name_that_is_not_utf8(codec: str) -> None:
    """What the lenient reader is for (if aiokafka reads such a name one day, it can go)."""
    with pytest.raises(UnicodeDecodeError):
        list(MemoryRecords(faust_compat.batch_with_unreadable_name(CODECS[codec])).next_batch())


@pytest.mark.parametrize("reader", ["C", "Python"])
@pytest.mark.parametrize("codec", list(CODECS))
def test_a_batch_with_a_header_name_that_is_not_utf8_is_read_whole_the_name_surrogate_escaped(
        codec: str, reader: str) -> None:
    data = memoryview(faust_compat.batch_with_unreadable_name(CODECS[codec]))
    own = MemoryRecords(bytes(data)).next_batch() if reader == "C" else default_records._DefaultRecordBatchPy(data)
    if reader == "C" and type(own) is default_records._DefaultRecordBatchPy:
        pytest.skip("aiokafka's C extension is not installed")
    got = [(r.offset, r.key, r.value, r.headers) for r in faust_compat._Batch(own, data)]
    assert got == [(0, b"k", b"v0", [("a", b"1")]), (1, b"k", b"v1", [("b", b"2"), (ESCAPED, b"3")]),
                   (2, b"k", b"v2", [])]


@pytest.mark.parametrize("fetched_from", [0, 1, 2])
def test_aiokafkas_fetcher_yields_each_record_of_such_a_batch_once_from_where_it_fetched(fetched_from: int) -> None:
    """Through the fetcher's own unpacking (CRC check, offsets, read_committed), as a
    fetch from `fetched_from` gets the batch."""
    tp = TopicPartition("t", 0)
    records = faust_compat._LenientRecords(faust_compat.batch_with_unreadable_name(1))
    unpacked = aiokafka_fetcher.PartitionRecords(tp, records, [], fetched_from, None, None, True,
                                                 aiokafka_fetcher.READ_COMMITTED)
    got = [(m.offset, m.value, m.headers) for m in unpacked]
    expected = [(0, b"v0", (("a", b"1"),)), (1, b"v1", (("b", b"2"), (ESCAPED, b"3"))), (2, b"v2", ())]
    assert got == expected[fetched_from:]
    assert unpacked.next_fetch_offset == 3


def test_the_writers_consumer_reads_batches_with_the_lenient_reader() -> None:
    async def create() -> None:  # (aiokafka's consumer is made in a running loop; nothing connects)
        consumer = _consumer()
        await consumer._thread._create_worker_consumer(consumer.transport).stop()

    before = aiokafka_fetcher.MemoryRecords
    try:
        aiokafka_fetcher.MemoryRecords = MemoryRecords
        asyncio.run(create())
        assert aiokafka_fetcher.MemoryRecords is faust_compat._LenientRecords
    finally:
        aiokafka_fetcher.MemoryRecords = before
