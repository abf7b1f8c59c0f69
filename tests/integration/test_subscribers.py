"""The topics other teams subscribe to, read as a Node service reads them: kafkajs with
its defaults, each record validated against the committed JSON Schemas by Ajv (a
non-Python client and a non-Python validator). kafkajs cannot read lz4: before the
subscriber topics were stored gzip-compressed, this crashed on the first fetch."""

from __future__ import annotations

import json
import subprocess
import time

from confluent_kafka import Producer

from schemas.fields import from_epoch_ms
from streams.kafka import config
from tests.factories import payment
from tests.integration.conftest import consume_all
from tests.integration.conftest import produce as produce_raw
from tests.integration.test_join import _historical, _settings
from tests.integration.workers import ROOT, start, stop, wait_until_done

JS = ROOT / "tests" / "js"
TRACE = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SCHEMAS = ROOT / "schemas" / "json"


def test_every_subscriber_topic_is_read_by_kafkajs_and_matches_its_json_schema(base_settings, tmp_path) -> None:
    s = _settings(base_settings)
    exp = _historical(s, 2_000, seed=23)
    produce_raw(s, s.payments_topic, [(b"ord-x", b'{"not": "a payment"}', None)])  # one for the DLQ
    paid = int(time.time() * 1000) - 60_000
    # its order never comes
    traced = payment(payment_id="pay-traced", order_id="ord-traced", paid_at=from_epoch_ms(paid))
    p = Producer(config.producer(s))
    p.produce(s.payments_topic, traced.encode(), b"ord-traced", timestamp=paid, headers=[("traceparent", TRACE)])
    assert p.flush(10) == 0
    worker = start(s, ["join"], tmp_path / "join.log")
    try:
        wait_until_done(s, exp.payments + exp.orders + 2)
        # Recoveries by the clock can follow the last input's commit (an end of partition
        # confirmed with the leader after the loop stood still: progress.EndWatch.stalled).
        assert len(consume_all(s, s.recovery_topic, len(exp.recovered) + 1, timeout=60)) == len(exp.recovered) + 1
    finally:
        assert stop(worker) == 0
    topics = {
        s.recovery_topic: ("recovery", len(exp.recovered) + 1),
        s.late_topic: ("late_order", len(exp.late)),
        s.anomalies_topic: ("anomaly", sum(exp.anomalies.values())),
        s.dlq_topic: ("dead_letter", 1),
    }
    request = {"brokers": s.bootstrap_servers.split(","), "timeoutMs": 60_000,
               "topics": {t: {"schema": str(SCHEMAS / f"{name}.schema.json"), "expect": n}
                          for t, (name, n) in topics.items()}}
    run = subprocess.run(["node", str(JS / "read_topics.mjs"), json.dumps(request)], capture_output=True, text=True,
                         timeout=120, cwd=JS)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["crash"] is None, f"kafkajs could not read the topics: {got['crash']}"
    for topic, (_, expected) in topics.items():
        seen = got["topics"][topic]
        assert seen["invalid"] == [], f"{topic}: records the JSON Schema rejects: {seen['invalid']}"
        assert seen["records"] == expected, f"{topic}: kafkajs read {seen['records']} of {expected}"

    # Every record names its content type, message type and schema version; a recovery
    # carries the trace of the payment it came from.
    traced_seen = False
    for topic, (name, expected) in topics.items():
        for m in consume_all(s, topic, expected):
            headers = dict(m.headers() or [])
            assert headers.get("content-type") == b"application/json", (topic, headers)
            assert headers.get("slipguard-type") == name.encode() and headers.get("slipguard-schema-version") == b"1"
            if m.key() == b"ord-traced":
                assert headers.get("traceparent") == TRACE
                traced_seen = True
    assert traced_seen, "the recovery of the traced payment was read"
