"""A record whose header name is not UTF-8, through a running `slipguard recover`, on the
real broker and the real PostgreSQL: aiokafka cannot decode such a name, and the record
shares a fetched record batch with honest ones (tests/integration/unreadable.py writes it)."""

from __future__ import annotations

import base64
import socket
import time
import urllib.request

import psycopg

from schemas import DeadLetter
from streams.kafka.topics import SUBSCRIBER_COMPRESSION
from tests.integration import unreadable
from tests.integration.conftest import consume_all
from tests.integration.test_recover import _recovery, writer_settings
from tests.integration.test_writer_fuzz import _ends, _late, _wait_committed
from tests.integration.unreadable import UNREADABLE, Foreign
from tests.integration.workers import start, stop
from tests.recover.test_fuzz_writer import TRACE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status(port: int, path: str) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).status
    except OSError as exc:
        return getattr(exc, "code", 0)


def test_a_header_name_that_is_not_utf8_goes_to_the_dlq_and_the_records_around_it_are_written(
        base_settings, tmp_path) -> None:
    s = writer_settings(base_settings)
    recoveries = [_recovery(i) for i in range(5)]
    trace = (("traceparent", TRACE),)
    bad = ((("traceparent", TRACE), (UNREADABLE, b"1"), ("h", b"2")))

    def rec(i: int, headers: tuple = ()) -> Foreign:
        r = recoveries[i]
        return Foreign(s.recovery_topic, r.order_id.encode(), r.encode(), headers, partition=0)

    def late(i: int, headers: tuple = ()) -> Foreign:
        return Foreign(s.late_topic, b"k", _late(recoveries[i]).encode(), headers, partition=0)

    def produce(servers: str, records: list[Foreign], one_batch: bool = False) -> list:
        return unreadable.produce(servers, records, one_batch=one_batch, compression=SUBSCRIBER_COMPRESSION)

    produce(s.bootstrap_servers, [rec(0)])
    # one record batch each: honest records before and after the unreadable one
    where = produce(s.bootstrap_servers, [rec(1, trace), rec(2, bad), rec(3)], one_batch=True)
    where += produce(s.bootstrap_servers, [late(1, bad), late(3, trace)], one_batch=True)
    produce(s.bootstrap_servers, [rec(4)])
    poison = {(where[1][0], where[1][1], where[1][2]): recoveries[2].encode(),
              (where[3][0], where[3][1], where[3][2]): _late(recoveries[1]).encode()}

    port = _free_port()
    log = tmp_path / "recover.log"
    writer = start(s, ["recover"], log, metrics_port=port)
    try:
        _wait_committed(s, _ends(s), timeout=60)
        assert writer.poll() is None, log.read_text()[-3000:]
        assert (_status(port, "/healthz"), _status(port, "/readyz")) == (200, 200)
        with psycopg.connect(s.database_url.get_secret_value()) as conn:
            rows = conn.execute("SELECT order_id, reconciled_at IS NOT NULL FROM orders ORDER BY 1").fetchall()
            audit = conn.execute("SELECT count(*) FROM recovery_audit").fetchone()[0]
        assert rows == [("ord-0", False), ("ord-1", False), ("ord-3", True), ("ord-4", False)], \
            "the honest records around it written (ord-3's late order after an unreadable one), once"
        assert audit == 4
        dead = [DeadLetter.decode(m.value()) for m in consume_all(s, s.dlq_topic, 3, timeout=10)]
        assert {(d.source_topic, d.partition, d.offset) for d in dead} == set(poison), "each once, nothing else"
        assert len(dead) == 2
        for d in dead:
            assert base64.b64decode(d.value_b64 or "") == poison[(d.source_topic, d.partition, d.offset)]
            assert "header name" in d.error and "not UTF-8" in d.error, d.error
            assert d.headers_dropped, "marked: not replayable as it is"
            assert [(h.key, h.value_b64) for h in d.headers or []] == [
                ("traceparent", base64.b64encode(TRACE).decode()), ("h", base64.b64encode(b"2").decode())]
        time.sleep(1.5)  # a readiness tick after the DLQ: still up and ready
        assert writer.poll() is None and _status(port, "/readyz") == 200, log.read_text()[-3000:]
    finally:
        assert stop(writer) == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
