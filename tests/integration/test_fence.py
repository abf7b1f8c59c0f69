"""at_least_once has no transaction to fence a member that lost its partitions without
knowing it (cut off from the brokers, or frozen, past its session timeout): its commit
fences itself (checkpoint.Checkpoint._confirm). Real members of a real group here: the
worker's own Membership and Checkpoint in processes of their own (tests/integration/member.py)."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from streams.kafka import config
from streams.kafka.topics import create_topics
from streams.settings import Settings
from tests.integration.conftest import consume_all, isolated
from tests.integration.workers import ROOT, env_for, group_timeouts


class _Member:
    """tests/integration/member.py as a process: assigned, then committing on request."""

    def __init__(self, s: Settings, name: str, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.integration.member"], cwd=ROOT,
                                     env=env_for(s, instance_id=name),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "ab"),  # noqa: SIM115
                                     text=True, start_new_session=True)

    def answer(self, timeout: float = 60) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"the member did not answer in {timeout}s:\n{self.log.read_text()[-3000:]}"
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert line, f"the member exited ({self.proc.poll()}):\n{self.log.read_text()[-3000:]}"
        return json.loads(line)

    def commit(self, offset: int, changes: list[tuple[int, str, str | None]]) -> bool:
        self.proc.stdin.write(json.dumps({"offset": offset, "changes": changes}) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.answer()["committed"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def test_a_member_frozen_past_its_session_writes_no_state_over_its_successors(base_settings, tmp_path) -> None:
    """Member A commits once (its state: key k pending), reads on (k still pending, not
    committed yet), and is frozen (SIGSTOP) past the group's session timeout (6 s). Member B
    is given the partition, decides k otherwise (a tombstone: matched) and commits past it.
    A thawed in the middle of its commit, as the cut-off worker of the cluster test came
    back (tests/cluster/test_faults.py): its membership is refused before any of its state
    is written, so B's tombstone stays the last word on k. Before the fence A wrote its
    stale 'pending' after B's tombstone (and only then had its offsets refused), and
    whoever restored the partition next recovered a payment whose order existed."""
    s = isolated(base_settings, partitions=1, processing_guarantee="at_least_once", group_protocol="consumer")
    create_topics(s)
    group_timeouts(s, session_ms=6_000, heartbeat_ms=1_000)
    a = _Member(s, "a", tmp_path / "a.log")
    b: _Member | None = None
    try:
        assert a.answer() == {"held": [0]}
        assert a.commit(1, [(0, "k", "pending (A, committed)")]), "a member of the group commits"
        a.proc.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        b = _Member(s, "b", tmp_path / "b.log")
        assert b.answer() == {"held": [0]}, "B is given the partition once A's session expired"
        assert time.monotonic() - frozen_at > 5, "not before A's session timeout"
        assert b.commit(5, [(0, "k", None)]), "the successor commits its state and its offsets"
        a.proc.send_signal(signal.SIGCONT)
        assert not a.commit(2, [(0, "k", "pending (A, stale)")]), "A's commit is refused"

        records = [(m.key(), m.value()) for m in consume_all(s, s.changelog_topic, 3, timeout=5)]
        assert records == [(b"k", b"pending (A, committed)"), (b"k", None)], \
            f"nothing of A's is written after B's state: {records}\n{(tmp_path / 'a.log').read_text()[-3000:]}"
        reader = Consumer(config.consumer(s, s.join_group))
        try:
            committed = reader.committed([TopicPartition(s.payments_topic, 0)], timeout=10)
        finally:
            reader.close()
        assert committed[0].offset == 5, "the group's offset is B's: A's confirmation moved nothing"
        assert "membership not confirmed, no state written" in (tmp_path / "a.log").read_text()
    finally:
        a.close()
        if b is not None:
            b.close()
