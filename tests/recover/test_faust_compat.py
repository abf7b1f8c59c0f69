"""The faust and aiokafka internals the writer overrides are still there, in the versions
it was written for: an upgrade that removes one fails here, not in production."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
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
