"""Run slipguard commands as real processes with a test's settings, and read their outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from schemas import LateOrder, Recovery
from streams.kafka import config
from streams.settings import Settings
from tests.integration.conftest import consume_all

ROOT = Path(__file__).resolve().parents[2]


def env_for(s: Settings, **over: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPGUARD_")}
    env |= s.to_env() | {f"SLIPGUARD_{k.upper()}": str(v) for k, v in over.items() if v is not None}
    for k in [k for k, v in over.items() if v is None]:  # None: the setting left unset
        env.pop(f"SLIPGUARD_{k.upper()}", None)
    env["PYTHONPATH"] = str(ROOT)
    return env


def start(s: Settings, command: list[str], log: Path, **over: object) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 (the process owns it)
    return subprocess.Popen([sys.executable, "-m", "streams", *command], env=env_for(s, **over), cwd=ROOT,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout)


_NOT_YET = {KafkaError._TIMED_OUT, KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
            KafkaError.COORDINATOR_NOT_AVAILABLE}


def committed_total(s: Settings, group: str, topics: list[str], partitions: int) -> int | None:
    """Sum of the group's stable committed offsets; None while they are not stable yet.

    A read_committed consumer asks for stable offsets (KIP-447): while a killed worker's
    transaction holds uncommitted offsets, the broker answers UNSTABLE_OFFSET_COMMIT until
    the transaction is aborted (transaction.timeout.ms), and librdkafka retries until its
    timeout. That is "not known yet", not a failure; so is a group coordinator still
    loading on a freshly started broker.
    """
    c = Consumer(config.consumer(s, group))
    try:
        tps = c.committed([TopicPartition(t, p) for t in topics for p in range(partitions)], timeout=5)
        return sum(max(tp.offset, 0) for tp in tps)
    except KafkaException as exc:
        if exc.args[0].code() in _NOT_YET:
            return None
        raise
    finally:
        c.close()


def wait_for_progress(s: Settings, fraction_of: int, fraction: float, timeout: float = 60) -> int:
    """Block until the join group has committed at least fraction * fraction_of input offsets."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = committed_total(s, s.join_group, [s.payments_topic, s.orders_topic], s.partitions)
        if done is not None and done >= fraction * fraction_of:
            return done
        time.sleep(0.1)
    raise AssertionError(f"join made no progress to {fraction:.0%} of {fraction_of} records in {timeout}s")


def recovered_ids(s: Settings, expected: int, timeout: float = 60, settle: float = 3.0) -> list[str]:
    """Recovery payment ids as a read_committed subscriber sees them (waits for `expected`, then settles)."""
    got = consume_all(s, s.recovery_topic, expected, timeout=timeout)
    more = consume_all(s, s.recovery_topic, len(got) + 1, timeout=settle)  # anything extra, e.g. duplicates
    return [Recovery.decode(m.value()).payment.payment_id for m in (more if len(more) > len(got) else got)]


def assert_recovered_once(s: Settings, expected: set[str], *, once: bool = True, timeout: float = 60) -> list[str]:
    """Every expected payment is on the recovery topic, none invented; with `once` (the
    exactly_once guarantee) each appears once for read_committed readers."""
    ids = recovered_ids(s, len(expected), timeout=timeout)
    assert set(ids) == expected, f"{len(set(ids) - expected)} invented, {len(expected - set(ids))} lost"
    if once:
        assert len(ids) == len(set(ids)), "read_committed readers see each recovery once"
    return ids


def late_ids(s: Settings, expected: int, timeout: float = 30) -> list[str]:
    return [LateOrder.decode(m.value()).order_id for m in consume_all(s, s.late_topic, expected, timeout=timeout)]


def wait_until_done(s: Settings, total_inputs: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = committed_total(s, s.join_group, [s.payments_topic, s.orders_topic], s.partitions)
        if done is not None and done >= total_inputs:
            return
        time.sleep(0.2)
    raise AssertionError(f"join did not commit all {total_inputs} input records within {timeout}s")


def group_timeouts(s, session_ms: int, heartbeat_ms: int) -> None:
    """The KIP-848 group's own session timeout and heartbeat interval (group configs; the
    local broker's floors are lowered for it, its defaults are not)."""
    from confluent_kafka.admin import AdminClient

    from streams.kafka.groups import HEARTBEAT, SESSION, set_group_configs

    set_group_configs(AdminClient(config.admin(s)), s.join_group, {SESSION: session_ms, HEARTBEAT: heartbeat_ms}, 30)
