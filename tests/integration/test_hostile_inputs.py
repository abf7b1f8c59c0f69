"""Hostile and unlucky inputs on the real broker: wrong clocks, huge values, junk.

Each case once broke the join: one order stamped 30 minutes ahead recovered every live
pending payment at once; an 800 KB invalid payment made a DLQ record over 1 MB that
killed the worker on every restart; a microsecond timestamp stayed pending forever.
"""

from __future__ import annotations

import base64
import json
import random
import time

from schemas import DeadLetter
from schemas.dlq import VALUE_PREFIX
from streams.tools.loadgen import Shares, merged, plan
from streams.tools.loadgen import produce as produce_plan
from tests.factories import order, payment
from tests.integration.conftest import consume_all, produce
from tests.integration.test_join import _settings
from tests.integration.test_lag import _free_port, _get
from tests.integration.workers import recovered_ids, start, stop, wait_until_done


def _value(model) -> bytes:
    return model.encode()


def _accept_any_timestamp(s) -> None:
    """Kafka 4 brokers refuse records stamped over an hour ahead by default
    (message.timestamp.after.max.ms); older brokers, and topics configured otherwise, take
    them. The inputs here take them, so that the join's own guard is what is tested."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    from streams.kafka import config

    admin = AdminClient(config.admin(s))
    entry = ConfigEntry("message.timestamp.after.max.ms", str(2**63 - 1),
                        incremental_operation=AlterConfigOpType.SET)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t, incremental_configs=[entry])
                 for t in (s.payments_topic, s.orders_topic)]
    for f in admin.incremental_alter_configs(resources).values():
        f.result()


def test_wrong_clocks_and_huge_values_neither_invent_recoveries_nor_stall_the_join(base_settings, tmp_path) -> None:
    s = _settings(base_settings, commit_interval="200ms")
    _accept_any_timestamp(s)
    log = tmp_path / "join.log"
    port = _free_port()
    worker = start(s, ["join"], log, metrics_port=port)
    try:
        now = int(time.time() * 1000)
        # A producer whose clock is 30 minutes fast publishes an order first...
        produce(s, s.orders_topic, [(b"skewed", _value(order(order_id="skewed")), now + 30 * 60_000)])
        # ...then 30 live payments, whose orders come 2 s later (well inside the 5 s timeout).
        pays = [(f"live{i}".encode(), _value(payment(payment_id=f"lp{i}", order_id=f"live{i}")), now + i)
                for i in range(30)]
        produce(s, s.payments_topic, pays)
        # An 800 KB payment and one stamped in microseconds (year 55,000 and more).
        huge = b'{"payment_id": "' + b"x" * 800_000 + b'"}'
        micro = _value(payment(payment_id="mp", order_id="micro"))
        produce(s, s.payments_topic, [(b"huge", huge, now), (b"micro", micro, now * 1000)])
        time.sleep(2)
        produce(s, s.orders_topic, [(f"live{i}".encode(), _value(order(order_id=f"live{i}")), now + 2_000 + i)
                                    for i in range(30)])
        wait_until_done(s, 30 + 2 + 31, timeout=60)
        time.sleep(8)  # past every deadline + grace by the wall clock
        dead = [DeadLetter.decode(m.value()) for m in consume_all(s, s.dlq_topic, 2, timeout=30)]
        assert len(dead) == 2
        by_key = {base64.b64decode(d.key_b64): d for d in dead}
        assert by_key[b"huge"].value_truncated and by_key[b"huge"].value_size == len(huge)
        assert len(base64.b64decode(by_key[b"huge"].value_b64)) == VALUE_PREFIX
        assert "over the join's limit" in by_key[b"huge"].error
        assert "SLIPGUARD_MAX_FUTURE" in by_key[b"micro"].error and by_key[b"micro"].timestamp_ms == now * 1000
        assert recovered_ids(s, 0, timeout=3, settle=2) == [], "no payment recovered: every order came in time"
        metrics = _get(port, "/metrics")[1]
        assert f'slipguard_join_records_stamped_ahead_total{{topic="{s.orders_topic}"}} 1.0' in metrics, \
            "the order from the fast clock is counted (the one stamped in microseconds went to the DLQ instead)"
        assert f'slipguard_join_records_stamped_ahead_total{{topic="{s.payments_topic}"}}' not in metrics
        assert worker.poll() is None, log.read_text()[-3000:]
    finally:
        assert stop(worker) == 0, log.read_text()[-3000:]


def test_a_catch_up_of_heavy_payments_never_stalls_on_record_size(base_settings, tmp_path) -> None:
    """~700-byte payments (12 metadata values of 48 characters), matched in a catch-up:
    bundles of matched pairs used to exceed 1 MB, abort the transaction and stall."""
    s = _settings(base_settings, commit_interval="2s")
    heavy = {f"k{i:02d}": "y" * 48 for i in range(12)}
    now = int(time.time() * 1000) - 600_000
    pays = [(f"h{i}".encode(), _value(payment(payment_id=f"hp{i}", order_id=f"h{i}", metadata=heavy)), now + i)
            for i in range(8_000)]
    ords = [(f"h{i}".encode(), _value(order(order_id=f"h{i}")), now + i + 100) for i in range(8_000)]
    produce(s, s.payments_topic, pays)
    produce(s, s.orders_topic, ords)
    log = tmp_path / "join.log"
    worker = start(s, ["join"], log)
    try:
        wait_until_done(s, 16_000, timeout=120)
        assert worker.poll() is None and "MSG_SIZE_TOO_LARGE" not in log.read_text()
    finally:
        assert stop(worker) == 0, log.read_text()[-3000:]


def _junk(rng: random.Random, i: int, now: int) -> tuple[int, bytes | None, bytes | None, int]:
    """One bad record: (topic 0 payments | 1 orders, key, value, timestamp)."""
    kind = rng.randrange(2)
    good = (payment(payment_id=f"bad{i}", order_id=f"bad{i}") if kind == 0 else order(order_id=f"bad{i}"))
    doc = json.loads(good.encode())
    shape = rng.randrange(10)
    key: bytes | None = f"bad{i}".encode()
    ts = now
    if shape == 0:
        value: bytes | None = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))  # random bytes
    elif shape == 1:
        doc["amount"] = rng.choice([10.5, -1, "NaN", "1e400", None, [], "10.123456"])  # wrong types and values
        value = json.dumps(doc).encode()
    elif shape == 2:
        value = json.dumps(doc).encode()[:-1] + b', "order_id": "other"}'  # a duplicate key
    elif shape == 3:
        value = b'{"order_id": "\xff\xfe"}'  # bad UTF-8
    elif shape == 4:
        key = b"not-the-order-id"  # key disagrees with order_id
        value = json.dumps(doc).encode()
    elif shape == 5:
        value = b""  # empty
    elif shape == 6:
        value = None  # a tombstone
    elif shape == 7:
        value = json.dumps(doc).encode()
        ts = rng.choice([now * 1000, 1, 900_000_000_000, now + 7_200_000])  # odd timestamps
    elif shape == 8:
        doc["currency"] = rng.choice(["usd", "ZZZ", "", "CN"])
        value = json.dumps(doc).encode()
    else:
        value = json.dumps({"metadata": "x" * rng.randrange(70_000, 200_000)}).encode()  # big
    return kind, key, value, ts


def test_fuzzed_inputs_good_ones_joined_as_planned_bad_ones_dead_lettered_worker_alive(base_settings, tmp_path) -> None:
    s = _settings(base_settings, commit_interval="200ms")
    _accept_any_timestamp(s)
    now = int(time.time() * 1000) - 300_000
    pays, ords, exp = plan(3_000, start_ms=now, spacing_ms=1.0, timeout_ms=5_000, seed=77,
                           shares=Shares(duplicates=0.0, second_payment=0.0, mismatch=0.0))
    produce_plan(s, merged(pays, ords))
    rng = random.Random(77)
    bad = [_junk(rng, i, now + 3_000) for i in range(1_500)]
    for kind in (0, 1):
        produce(s, (s.payments_topic, s.orders_topic)[kind], [(k, v, ts) for t, k, v, ts in bad if t == kind])
    # Two more good ones after the junk: the partitions moved on past it.
    end = int(time.time() * 1000) - 60_000
    produce(s, s.payments_topic, [(b"after", _value(payment(payment_id="pafter", order_id="after")), end)])
    log = tmp_path / "join.log"
    worker = start(s, ["join"], log)
    try:
        wait_until_done(s, exp.payments + exp.orders + len(bad) + 1, timeout=180)
        ids = recovered_ids(s, len(exp.recovered) + 1, timeout=60)
        assert set(ids) == exp.recovered | {"pafter"}
        assert len(ids) == len(set(ids))
        dead = consume_all(s, s.dlq_topic, len(bad), timeout=60)
        assert len(dead) == len(bad), "every bad record is in the DLQ, once"
        assert worker.poll() is None, log.read_text()[-3000:]
    finally:
        assert stop(worker) == 0, log.read_text()[-3000:]


def _produce_big(s, topic: str, records: list[tuple[bytes, bytes, int, list]]) -> None:
    """(key, value, timestamp, headers) records up to the topic's limit (1,048,588 bytes):
    the project's producer stops at 1,000,000, as the join's does."""
    from confluent_kafka import Producer

    from streams.kafka import config

    failed: list[str] = []
    p = Producer(config.producer(s, **{"message.max.bytes": 1_048_000, "batch.size": 1_048_000},
                                 on_delivery=lambda err, _m: err is not None and failed.append(str(err))))
    for key, value, ts, headers in records:
        p.produce(topic, value, key, timestamp=ts, headers=headers)
    assert p.flush(30) == 0 and not failed, failed


def test_the_reviews_records_neither_kill_nor_stall_nor_fool_the_join(base_settings, tmp_path) -> None:
    """The review's cases, on the real broker, with personal data minimised as the
    Kubernetes overlays run it: a payment holding a lone surrogate (escaped, and as raw
    bytes ED A0 80) killed the worker while its dead letter was built; a 999,000-byte
    traceparent made the DLQ produce fail and the worker re-read the same record forever,
    and a 1,000,000-byte one did it to a recovery; a signed payment re-published two hours
    later was recovered with no anomaly."""
    from schemas import Anomaly, Recovery, recovery_id_for
    from schemas.fields import from_epoch_ms
    from tests.factories import payment_signed

    key = "review-hmac-key-of-32-bytes-long"
    s = _settings(base_settings, commit_interval="200ms", minimise_personal_data="true", payment_hmac_key=key)
    now = int(time.time() * 1000)
    good = payment_signed(key.encode(), payment_id="p-ok", order_id="o-ok", paid_at=from_epoch_ms(now - 30_000))
    replayed = payment_signed(key.encode(), order_id="replayed", paid_at=from_epoch_ms(now - 7_200_000))
    surrogate_escaped = b'{"payment_id":"p1","order_id":"s1","user_id":"\\ud800","metadata":{"k":"v"}}'
    surrogate_raw = b'{"payment_id":"p2","order_id":"s2","user_id":"u\xed\xa0\x80","metadata":{"k":"v"}}'
    _produce_big(s, s.payments_topic, [
        (b"s1", surrogate_escaped, now - 30_000, []),
        (b"s2", surrogate_raw, now - 30_000, []),
        (b"h1", b'{"not":"a payment"}', now - 30_000, [("traceparent", b"x" * 999_000)]),
        (b"o-big", payment(payment_id="p-big", order_id="o-big").encode(), now - 30_000,
         [("traceparent", b"y" * 1_000_000)]),
        (b"replayed", replayed.encode(), now - 10_000, []),  # its event time now, its paid_at two hours ago
        (b"o-ok", good.encode(), now - 30_000, [("traceparent", b"z" * 100)]),  # after them: not stalled
    ])
    log = tmp_path / "join.log"
    worker = start(s, ["join"], log)
    try:
        wait_until_done(s, 6, timeout=60)
        dead = {base64.b64decode(d.key_b64 or ""): d for d in
                (DeadLetter.decode(m.value()) for m in consume_all(s, s.dlq_topic, 4, timeout=30))}
        assert set(dead) == {b"s1", b"s2", b"h1", b"o-big"}, set(dead)
        assert all(d.value_redacted for k, d in dead.items() if k in (b"s1", b"s2")), "minimised letters"
        recoveries = {Recovery.decode(m.value()).payment.payment_id: m for m in consume_all(s, s.recovery_topic, 2)}
        assert set(recoveries) == {"p-ok", replayed.payment_id}, "the replay is handled as usual"
        assert Recovery.decode(recoveries[replayed.payment_id].value()).recovery_id == \
            recovery_id_for(replayed.payment_id), "with the recovery_id of its payment_id: written once"
        assert "traceparent" not in dict(recoveries["p-ok"].headers() or []), "a header that is no traceparent"
        kinds = [Anomaly.decode(m.value()).kind for m in consume_all(s, s.anomalies_topic, 1, timeout=10)]
        assert kinds == ["paid_at_skew"]
        assert worker.poll() is None, log.read_text()[-3000:]
    finally:
        assert stop(worker) == 0, log.read_text()[-3000:]
