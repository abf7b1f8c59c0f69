"""Run slipguard commands as real processes with a test's settings, and read their outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from schemas import LateOrder, Recovery
from streams.kafka import config
from streams.settings import Settings
from tests.integration.conftest import consume_all

ROOT = Path(__file__).resolve().parents[2]


def env_for(s: Settings, root: Path = ROOT, **over: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPGUARD_")}
    env |= s.to_env() | {f"SLIPGUARD_{k.upper()}": str(v) for k, v in over.items() if v is not None}
    for k in [k for k, v in over.items() if v is None]:  # None: the setting left unset
        env.pop(f"SLIPGUARD_{k.upper()}", None)
    env["PYTHONPATH"] = str(root)
    return env


def start(s: Settings, command: list[str], log: Path, root: Path = ROOT, **over: object) -> subprocess.Popen:
    """`root`: the source tree to run (another release's, for an upgrade test)."""
    out = open(log, "ab")  # noqa: SIM115 (the process owns it)
    return subprocess.Popen([sys.executable, "-m", "streams", *command], env=env_for(s, root, **over), cwd=root,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def release(commit: str, into: Path) -> Path:
    """The source of an earlier release (`streams/` and `schemas/` at `commit`, from this
    repository's history), to run as a worker beside this one."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "streams", "schemas"], capture_output=True,
                             check=False)
    assert archive.returncode == 0, f"git archive {commit}: {archive.stderr.decode()[-500:]} (a shallow clone?)"
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


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


def recovered_ids(s: Settings, expected: int, timeout: float = 60, settle: float = 0.5) -> list[str]:
    """Recovery payment ids as a read_committed subscriber sees them: waits for `expected`,
    then reads on to the topic's end as it is then (anything extra committed by then, such
    as a duplicate, is read too), then watches `settle` seconds more for anything later."""
    return [Recovery.decode(v).payment.payment_id for v in read_to_end(s, s.recovery_topic, expected, timeout, settle)]


def read_to_end(s: Settings, topic: str, expected: int, timeout: float, settle: float) -> list[bytes]:
    """Values of a topic from its beginning, read_committed (assigned: no group to join):
    until `expected`, then to the end offsets as they are then, then `settle` seconds more."""
    c = Consumer(config.consumer(s, f"reader-{os.getpid()}"))
    try:
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING)
                 for p in c.list_topics(topic, timeout=10).topics[topic].partitions]
        c.assign(parts)
        got: list[bytes] = []
        deadline = time.monotonic() + timeout

        def read(seconds: float) -> None:
            for m in c.consume(1000, timeout=seconds):
                if m.error() is None:
                    got.append(m.value())  # type: ignore[arg-type]

        while len(got) < expected and time.monotonic() < deadline:
            read(0.2)
        ends = {tp.partition: c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts}
        # read_committed: a position stops before an open transaction, and passes its
        # markers once it commits (within a commit interval); so wait until each is at the end.
        until = time.monotonic() + 30
        while time.monotonic() < until:
            positions = {tp.partition: tp.offset for tp in c.position(parts)}
            if all(positions[p] >= end or end == 0 for p, end in ends.items()):
                break
            read(0.1)
        else:
            raise AssertionError(f"{topic}: read_committed position did not reach {ends} in 30 s")
        until = time.monotonic() + settle
        while time.monotonic() < until:
            read(min(0.1, max(0.0, until - time.monotonic())))
        return got
    finally:
        c.close()


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
