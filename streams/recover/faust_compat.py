"""Everything the recovery writer needs from faust-streaming and aiokafka beyond their
public API, in one place.

faust asks aiokafka for read_committed only under its own exactly_once mode; the writer
acknowledges after the database commit instead, but must still never see aborted or
open transactions of the join. So four private members are overridden:

* `faust.App._new_transport` -> a transport whose consumer is ours;
* `faust...aiokafka.Consumer._new_consumer_thread` -> our consumer thread;
* `faust...aiokafka.AIOKafkaConsumerThread._create_worker_consumer` -> sets
* `aiokafka.AIOKafkaConsumer._isolation_level`, which aiokafka reads in start() to build its fetcher.

Written for the versions in WRITTEN_FOR (pinned in pyproject.toml). `missing()` lists
what an upgrade removed; a test fails on it, and on a version outside these.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

WRITTEN_FOR = {"faust-streaming": "0.15.", "aiokafka": "0.14."}
OVERRIDDEN = (
    (faust.App, "_new_transport"),
    (faust_aiokafka.Consumer, "_new_consumer_thread"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer"),
    (faust_aiokafka, "Transport"),
)


class _ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"  # aiokafka builds its Fetcher from this in start()
        return consumer


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


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
    return gone


def unexpected_versions() -> dict[str, str]:
    """Installed versions other than those this was written for: package -> version."""
    installed = {name: version(name) for name in WRITTEN_FOR}
    return {name: v for name, v in installed.items() if not v.startswith(WRITTEN_FOR[name])}
