"""Everything the recovery writer needs from faust-streaming and aiokafka beyond their
public API, in one place.

faust asks aiokafka for read_committed only under its own exactly_once mode; the writer
acknowledges after the database commit instead, but must still never see aborted or
open transactions of the join. So four private members are overridden:

* `faust.App._new_transport` -> a transport whose consumer is ours;
* `faust...aiokafka.Consumer._new_consumer_thread` -> our consumer thread;
* `faust...aiokafka.AIOKafkaConsumerThread._create_worker_consumer` -> the same
  consumer, with the next one set;
* `aiokafka.AIOKafkaConsumer._isolation_level` -> "read_committed", which aiokafka reads
  in start() to build its fetcher.

And one for speed: faust's fetch loop (`Consumer._drain_messages`) hands each record to
the streams with `wait_first(callback(message), self.suspend_flow.wait())`, which makes
four tasks and an `asyncio.wait` per record: a third of the writer's CPU. The consumer's
`wait_first` (mode's `Service.wait_first`) takes that one call and, while the flow is not
suspended, runs the callback's first step in place. A callback that does not block (the
usual case: the stream's queue has room) is then done with no task at all; one that
blocks (a full queue, a suspended flow, a busy producer) goes on in a task raced against
`suspend_flow` exactly as faust does it. The callback's first step runs in the fetch
loop's task rather than a task of its own; faust's delivery does not look at the current
task or set context variables.

Written for the versions in WRITTEN_FOR (pinned in pyproject.toml). `missing()` lists
what an upgrade removed; a test fails on it, and on a version outside these.
"""

from __future__ import annotations

import asyncio
import inspect
import types
from collections.abc import Coroutine, Generator
from importlib.metadata import version
from typing import Any

import aiokafka
import faust
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import Service, WaitResults

WRITTEN_FOR = {"faust-streaming": "0.15.", "aiokafka": "0.14."}
OVERRIDDEN = (
    (faust.App, "_new_transport"),
    (faust_aiokafka.Consumer, "_new_consumer_thread"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer"),
    (faust_aiokafka, "Transport"),
    (Service, "wait_first"),
)
# The one call whose wait_first is taken in place (spaces removed).
DRAIN_CALL = "awaitself.wait_first(callback(message),self.suspend_flow.wait())"
_EVENT_WAIT = asyncio.Event.wait.__code__


class _ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"  # aiokafka builds its Fetcher from this in start()
        return consumer


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], awaiting: Any) -> Generator[Any, Any, Any]:
    """Run the rest of `coro`, whose first step was taken outside any task of its own and
    which now waits on `awaiting` (what that step yielded). Inside a task this is that
    task running `coro` from the start: it waits on what `coro` awaits, and a cancellation
    is thrown in at the await."""
    try:
        while True:
            try:
                sent = yield awaiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 (a cancellation, or the awaited future's error)
                awaiting = coro.throw(exc)
            else:
                awaiting = coro.send(sent)
    except StopIteration as done:
        return done.value


def _waits_on(coro: Any, event: asyncio.Event) -> bool:
    """Whether `coro` is `event.wait()`, not yet started."""
    return (type(coro) is types.CoroutineType and coro.cr_code is _EVENT_WAIT and coro.cr_frame is not None
            and coro.cr_frame.f_locals.get("self") is event)


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        """The fetch loop's `wait_first(callback(message), self.suspend_flow.wait())`,
        with the callback's first step taken in place (the module's docstring); every
        other call is mode's."""
        if (len(coros) == 2 and timeout is None and type(coros[0]) is types.CoroutineType
                and not (self.suspend_flow.is_set() or self._stopped.is_set() or self._crashed.is_set())
                and _waits_on(coros[1], self.suspend_flow)):
            deliver, suspended = coros
            try:
                awaiting = deliver.send(None)
            except StopIteration as done:
                suspended.close()
                return WaitResults([deliver], [done.value], False)
            except BaseException:
                suspended.close()
                raise
            return await super().wait_first(asyncio.ensure_future(_resume(deliver, awaiting)), suspended)
        return await super().wait_first(*coros, timeout=timeout)


class _Transport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer


class ReadCommittedApp(faust.App):
    """A faust app whose consumers read with isolation.level=read_committed."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self, loop=self.loop)


def missing() -> list[str]:
    """What this module relies on and the installed versions lack (empty: all there)."""
    gone = [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name in OVERRIDDEN if not hasattr(owner, name)]
    source = inspect.getsource(aiokafka.AIOKafkaConsumer)
    if "self._isolation_level = isolation_level" not in source or "isolation_level=self._isolation_level" not in source:
        gone.append("aiokafka.AIOKafkaConsumer._isolation_level (read by start() to build the fetcher)")
    if DRAIN_CALL not in "".join(inspect.getsource(faust_consumer.Consumer._drain_messages).split()):
        gone.append(f"faust.transport.consumer.Consumer._drain_messages calling {DRAIN_CALL} "
                    "(taken in place by wait_first)")
    return gone


def unexpected_versions() -> dict[str, str]:
    """Installed versions other than those this was written for: package -> version."""
    installed = {name: version(name) for name in WRITTEN_FOR}
    return {name: v for name, v in installed.items() if not v.startswith(WRITTEN_FOR[name])}
