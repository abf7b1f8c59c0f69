"""`slipguard dlq list` and `slipguard dlq replay` on the real broker: a corrected dead
letter goes back to its topic once, with its key, timestamp and headers, and the join
then does what it would have done; a replay writes only to the join's inputs and asks
before it writes."""

from __future__ import annotations

import base64
import json
import os
import pty
import subprocess
import sys
import time
from datetime import UTC, datetime

from confluent_kafka import Consumer, Producer, TopicPartition

from schemas import DeadLetter, Recovery
from streams.cli import main
from streams.kafka import config
from streams.ops.dlq import letters, replay, replayed_topic
from tests.factories import payment
from tests.integration.conftest import consume_all
from tests.integration.test_join import _settings
from tests.integration.workers import ROOT, env_for, start, stop

TRACE = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_corrected_dead_letter_is_replayed_once_and_recovered(base_settings, tmp_path, capsys) -> None:
    s = _settings(base_settings)
    good = payment(payment_id="pay-fixed", order_id="ord-fixed")
    broken = json.loads(good.encode()) | {"amount": "twelve"}
    ts = int(time.time() * 1000) - 60_000
    p = Producer(config.producer(s))
    p.produce(s.payments_topic, b'{"not": "a payment"}', b"ord-junk", timestamp=ts)
    p.produce(s.payments_topic, json.dumps(broken).encode(), b"ord-fixed", timestamp=ts,
              headers=[("traceparent", TRACE)])
    assert p.flush(10) == 0
    worker = start(s, ["join"], tmp_path / "join.log")
    try:
        assert len(consume_all(s, s.dlq_topic, 2)) == 2
        found = letters(s)
        assert [x.dead.source_topic for x in found] == [s.payments_topic] * 2
        assert len(letters(s, reason="decimal")) == 1, "--reason: the error text"

        flags = [f"--dlq-topic={s.dlq_topic}", f"--payments-topic={s.payments_topic}"]
        assert main(["dlq", "list", *flags]) == 0
        listed = capsys.readouterr().out
        assert "2 dead letter(s)" in listed and "ord-fixed" not in listed  # keys are not printed

        fixed_ref = next(x.ref for x in found if base64.b64decode(x.dead.key_b64) == b"ord-fixed")
        corrected = tmp_path / "fixed.jsonl"
        corrected.write_text(json.dumps({"dlq": fixed_ref, "value": json.loads(good.encode())}) + "\n")
        assert main(["dlq", "replay", f"--file={corrected}", "--dry-run", "--json", *flags]) == 0
        planned = json.loads(capsys.readouterr().out)
        assert planned == [{"action": "would replay", "dlq": fixed_ref, "detail": f"to {s.payments_topic}"}]
        assert main(["dlq", "replay", f"--file={corrected}", "--yes", *flags]) == 0
        assert f"replayed {fixed_ref}" in capsys.readouterr().out
        # Run again (as after an interruption): nothing is published twice.
        lines = replay(s, letters(s), {})
        assert f"skipped  {fixed_ref}: replayed before" in lines

        # The join recovers the corrected payment: its order never comes.
        recovered = [Recovery.decode(m.value()) for m in consume_all(s, s.recovery_topic, 1, timeout=60)]
        assert [r.payment.payment_id for r in recovered] == ["pay-fixed"]
    finally:
        assert stop(worker) == 0
    replayed = [m for m in consume_all(s, s.payments_topic, 3) if m.key() == b"ord-fixed"]
    assert len(replayed) == 2, "the broken original and exactly one replay"
    again = replayed[1]
    headers = dict(again.headers())
    assert again.timestamp()[1] == ts and headers["traceparent"] == TRACE
    assert headers["slipguard-replay-of"] == f"{s.dlq_topic}:{fixed_ref}".encode()


def _post(s, targets: list[str]) -> None:
    """One dead letter per target on partition 0 of the DLQ (refs 0:0, 0:1, ...), each saying
    it came from that topic and holding a valid payment: what anyone who may write to the
    DLQ can put there."""
    p = Producer(config.producer(s))
    for n, topic in enumerate(targets):
        value = payment(payment_id=f"pay-crafted-{n}", order_id=f"ord-crafted-{n}").encode()
        dead = DeadLetter.of(topic=topic, partition=0, offset=n, timestamp_ms=int(time.time() * 1000), headers=None,
                             key=f"ord-crafted-{n}".encode(), value=value, error="crafted",
                             failed_at=datetime.now(UTC))
        p.produce(s.dlq_topic, dead.encode(), b"crafted", partition=0)
    assert p.flush(10) == 0


def _written(s, topic: str) -> int:
    """Offsets ever written to `topic` (transaction markers included): 0 means nothing at all."""
    c = Consumer(config.consumer(s, "watermarks"))
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def _exists(s, topic: str) -> bool:
    c = Consumer(config.consumer(s, "metadata"))
    try:
        return topic in c.list_topics(timeout=10).topics
    finally:
        c.close()


def test_a_crafted_letter_is_never_replayed_outside_the_joins_inputs(settings, capsys) -> None:
    s = settings
    crafted = [s.recovery_topic, s.changelog_topic, "__consumer_offsets"]
    _post(s, [*crafted, s.orders_topic])
    before = {t: _written(s, t) for t in crafted[:2]}
    assert before == {s.recovery_topic: 0, s.changelog_topic: 0}

    flags = [f"--dlq-topic={s.dlq_topic}", f"--payments-topic={s.payments_topic}", f"--orders-topic={s.orders_topic}"]
    assert main(["dlq", "replay", "--offsets=0-3", "--yes", *flags]) == 0
    out = capsys.readouterr().out.splitlines()
    for n, topic in enumerate(crafted):
        assert f"skipped  0:{n}: its source topic {topic!r} is not one of the join's inputs" in out[n], out
    assert out[3].startswith(f"replayed 0:3 to {s.orders_topic}"), "a letter from an input still goes back"
    assert {t: _written(s, t) for t in crafted[:2]} == before, "nothing reached the output or the changelog"
    assert main(["dlq", "list", "--json", *flags]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [x["replayable"] for x in listed] == [False, False, False, True]


def _replay_cli(s, args: list[str], answer: bytes | None) -> subprocess.CompletedProcess:
    """`slipguard dlq replay` as a process: on a real terminal that answers `answer`, or
    with no terminal (stdin /dev/null) when `answer` is None."""
    command = [sys.executable, "-m", "streams", "dlq", "replay", *args]
    if answer is None:
        return subprocess.run(command, env=env_for(s), cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=60, check=False)
    main_fd, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(command, env=env_for(s), cwd=ROOT, stdin=terminal, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        os.write(main_fd, answer)  # typed ahead: the terminal holds the line until it is read
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(terminal)
        os.close(main_fd)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def test_replay_shows_its_plan_and_asks_and_without_a_terminal_needs_yes(settings) -> None:
    s = settings
    _post(s, [s.payments_topic])
    no_tty = _replay_cli(s, ["--offsets=0"], None)
    assert no_tty.returncode == 2 and no_tty.stderr.decode().count("\n") == 1 and b"--yes" in no_tty.stderr
    assert _written(s, s.payments_topic) == 0, "refused without a terminal: nothing written"
    assert not _exists(s, replayed_topic(s)), "not even the marker topic was created"

    declined = _replay_cli(s, ["--offsets=0"], b"n\n")
    assert declined.returncode == 1, declined.stderr
    assert f"would replay 0:0 to {s.payments_topic}".encode() in declined.stderr
    assert b"replay 1 dead letter(s)? [y/N]" in declined.stderr and b"not confirmed" in declined.stderr
    assert _written(s, s.payments_topic) == 0, "declined: nothing written"

    accepted = _replay_cli(s, ["--offsets=0"], b"y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.decode().startswith(f"replayed 0:0 to {s.payments_topic}")
    assert len(consume_all(s, s.payments_topic, 1)) == 1

    scripted = _replay_cli(s, ["--offsets=0", "--yes"], None)
    assert scripted.returncode == 0 and scripted.stdout == b"skipped  0:0: replayed before\n", scripted
