"""`slipguard dlq list` and `slipguard dlq replay` on the real broker: a corrected dead
letter goes back to its topic once, with its key, timestamp and headers, and the join
then does what it would have done."""

from __future__ import annotations

import base64
import json
import time

from confluent_kafka import Producer

from schemas import Recovery
from streams.cli import main
from streams.kafka import config
from streams.ops.dlq import letters, replay
from tests.factories import payment
from tests.integration.conftest import consume_all
from tests.integration.test_join import _settings
from tests.integration.workers import start, stop

TRACE = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_corrected_dead_letter_is_replayed_once_and_recovered(base_settings, tmp_path, capsys) -> None:
    s = _settings(base_settings)
    good = payment(payment_id="pay-fixed", order_id="ord-fixed")
    broken = json.loads(good.encode()) | {"amount": "twelve"}
    ts = int(time.time() * 1000) - 60_000
    p = Producer(config.producer(s))
    p.produce(s.payments_topic, b'{"not": "a payment"}', b"ord-junk", timestamp=ts)
    p.produce(s.payments_topic, json.dumps(broken).encode(), b"ord-fixed", timestamp=ts, headers=[("traceparent", TRACE)])
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
        assert main(["dlq", "replay", f"--file={corrected}", *flags]) == 0
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
