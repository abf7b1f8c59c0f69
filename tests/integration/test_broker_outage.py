"""The broker stops answering mid-stream and comes back: the join loses and doubles nothing.

The stack's one broker is frozen (SIGSTOP: connections stay open, nothing answers, as in
a long GC pause or a network partition) and thawed (SIGCONT), with deploy/local/stack.sh.
The test thaws it whatever happens, so the tests after it find the stack as they expect.
"""

from __future__ import annotations

import base64
import subprocess
import threading
import time

import pytest
from confluent_kafka.admin import AdminClient

from schemas import DeadLetter
from streams.kafka import config
from streams.kafka.read import read
from streams.kafka.topics import create_topics
from streams.tools.loadgen import merged, plan, produce
from tests.factories import order, payment
from tests.integration.conftest import isolated
from tests.integration.conftest import produce as produce_raw
from tests.integration.test_hostile_inputs import _accept_any_timestamp
from tests.integration.test_recover import (
    _assert_each_once,
    _produce_recoveries,
    _recovery,
    _wait_rows,
    writer_settings,
)
from tests.integration.workers import ROOT, recovered_ids, start, stop, wait_until_done

STACK = ROOT / "deploy" / "local" / "stack.sh"
TIMEOUT_MS = 5_000


def _stack(command: str) -> None:
    subprocess.run(["bash", str(STACK), command], check=True, capture_output=True, timeout=180)


def _broker_answers(s, timeout: float = 120) -> None:
    admin = AdminClient(config.admin(s))
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=5)
            return
        except Exception:  # noqa: BLE001 (not answering yet)
            assert time.monotonic() < deadline, "the broker did not come back"
            time.sleep(0.5)


def _wave(s, count: int, seed: int):
    """Live traffic; every record is in the log when this returns."""
    pays, ords, exp = plan(count, start_ms=int(time.time() * 1000) + 500, spacing_ms=0.5, timeout_ms=TIMEOUT_MS,
                           seed=seed, prefix=f"w{seed}-")
    produce(s, merged(pays, ords), realtime=True)
    return exp


def _waves(stacks: list, count: int, seed: int) -> list:
    """One wave of live traffic into each stack's topics at once (so that their deadlines
    fall alike); every record is in the logs when this returns."""
    waves: list = [None] * len(stacks)

    def one(i: int) -> None:
        waves[i] = _wave(stacks[i], count, seed)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(stacks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(waves), "a wave failed to produce"
    return waves


HOSTILE = 3  # records _hostile produces


def _hostile(s) -> None:
    """Records from bad producers ahead of the first wave: an order from a clock 30 minutes
    fast (it must time out nothing), an 800 KB payment and one stamped in microseconds
    (both for the DLQ)."""
    now = int(time.time() * 1000)
    _accept_any_timestamp(s)
    produce_raw(s, s.orders_topic, [(b"skewed", order(order_id="skewed").encode(), now + 30 * 60_000)])
    huge = b'{"payment_id": "' + b"x" * 800_000 + b'"}'
    produce_raw(s, s.payments_topic, [(b"huge", huge, now),
                                      (b"micro", payment(payment_id="mp", order_id="micro").encode(), now * 1000)])


def test_broker_frozen_with_recoveries_due_then_thawed_loses_and_doubles_nothing(base_settings, tmp_path) -> None:
    """The broker freezes while the workers hold pending payments whose deadlines pass
    during the freeze (longer than the session and transaction timeouts): their recoveries
    go into a transaction (at_least_once: a flush) that cannot complete. After the thaw
    every recovery of the first wave appears (once, with exactly_once), and the workers
    go on to process a second wave. One worker per guarantee, each on its own topics and
    group, ride out the same freeze. Hostile records came first (_hostile): the skewed
    order invents no recovery, the other two are dead-lettered, once each."""
    guarantees = ["exactly_once", "at_least_once"]
    stacks = [isolated(base_settings, order_timeout="5s", grace="1s", commit_interval="200ms",
                       processing_guarantee=g) for g in guarantees]
    for s in stacks:
        create_topics(s)
        _hostile(s)
    logs = [tmp_path / f"join-{g}.log" for g in guarantees]
    workers = [start(s, ["join"], log) for s, log in zip(stacks, logs, strict=True)]
    frozen = False
    try:
        deadline = time.monotonic() + 60
        for log in logs:
            while "restored partitions" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.1)
        firsts = _waves(stacks, 6_000, seed=21)
        _stack("kafka-freeze")  # the last payments' deadlines (+ grace) are 2-6 s ahead
        frozen = True
        time.sleep(15)
        _stack("kafka-thaw")
        frozen = False
        _broker_answers(stacks[0])
        seconds = _waves(stacks, 2_000, seed=22)
        for g, s, log, worker, first, second in zip(guarantees, stacks, logs, workers, firsts, seconds, strict=True):
            total = first.payments + first.orders + second.payments + second.orders + HOSTILE
            wait_until_done(s, total, timeout=180)
            expected = first.recovered | second.recovered
            ids = recovered_ids(s, len(expected), timeout=120)
            assert set(ids) == expected, f"{g}: {len(set(ids) - expected)} invented, {len(expected - set(ids))} lost"
            if g == "exactly_once":
                assert len(ids) == len(set(ids)), "read_committed readers see each recovery once"
            keys = sorted(base64.b64decode(DeadLetter.decode(r.value).key_b64) for r in read(s, s.dlq_topic))
            assert keys == [b"huge", b"micro"] or (g != "exactly_once" and set(keys) == {b"huge", b"micro"}), keys
            assert worker.poll() is None, f"the {g} worker rode out the outage: " + log.read_text()[-3000:]
    finally:
        if frozen:
            _stack("kafka-thaw")
        _broker_answers(stacks[0])
        for worker in workers:
            stop(worker)


@pytest.mark.parametrize("fault", ["freeze", "kill-and-restart"])
def test_writer_rides_out_a_frozen_or_restarted_broker_and_writes_every_row_once(base_settings, tmp_path,
                                                                                fault: str) -> None:
    """The recovery writer mid-stream when the broker freezes for 15 s (past its session
    timeout), or is killed -9 and started again: it must not exit or wedge, and every
    recovery, before and after, ends up as exactly one row."""
    s = writer_settings(base_settings)
    first = [_recovery(i) for i in range(20_000)]
    second = [_recovery(i) for i in range(20_000, 22_000)]
    log = tmp_path / "recover.log"
    _produce_recoveries(s, first)
    writer = start(s, ["recover"], log)
    frozen = False
    try:
        _wait_rows(s, 2_000)
        if fault == "freeze":
            _stack("kafka-freeze")
            frozen = True
            assert _wait_rows(s, 0) < len(first), "frozen mid-stream"
            time.sleep(15)
            _stack("kafka-thaw")
            frozen = False
        else:
            # Counted before the kill: the restart waits for the broker to answer again, and
            # meanwhile the writer may finish the records it had fetched already.
            assert _wait_rows(s, 0) < len(first), "killed mid-stream"
            subprocess.run(["bash", str(STACK), "kafka-restart", "hard"], check=True, capture_output=True, timeout=240)
        _broker_answers(s)
        _produce_recoveries(s, second)
        _wait_rows(s, 22_000, timeout=180)
        time.sleep(2)
        _assert_each_once(s, {r.order_id for r in first + second})
        assert writer.poll() is None, "the writer rode out the outage: " + log.read_text()[-3000:]
    finally:
        if frozen:
            _stack("kafka-thaw")
        _broker_answers(s)
        assert stop(writer) == 0, log.read_text()[-3000:]
