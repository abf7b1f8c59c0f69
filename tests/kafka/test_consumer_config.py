"""Every confluent-kafka consumer of slipguard's is configured by streams.kafka.config.consumer,
whose defaults hold what every one of them needs."""

from __future__ import annotations

import ast
from pathlib import Path

from streams.kafka import config
from streams.settings import Settings

STREAMS = Path(__file__).resolve().parents[2] / "streams"


def test_a_consumer_whose_queue_is_full_fetches_again_within_milliseconds_not_a_second() -> None:
    """librdkafka's fetch.queue.backoff.ms (1 s by default) leaves a partition unfetched that
    long once the local queue holds queued.min.messages: a restore, a read to an end or a
    join catching up empties that queue faster, then waits (a restore of 1 M records: 2.8-3.1 s
    with it, 1.7-1.9 s with 10 ms)."""
    conf = config.consumer(Settings(), "g")
    assert conf["fetch.queue.backoff.ms"] <= 10
    assert conf["queued.min.messages"] >= 100_000


def test_every_consumer_is_built_from_config_consumer() -> None:
    """A Consumer(...) given any other dict would miss those defaults (and the security settings)."""
    strays = []
    for path in STREAMS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Consumer"):
                continue
            arg = node.args[0] if node.args else None
            built = isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and \
                arg.func.attr in ("consumer", "conf")
            if not built:
                strays.append(f"{path.relative_to(STREAMS.parent)}:{node.lineno}")
    assert not strays, f"Consumer(...) not given config.consumer(...): {strays}"
