"""The recovery writer on the real broker and the real PostgreSQL."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest

from schemas import DeadLetter, LateOrder, Recovery, recovery_id_for
from streams.db import migrate
from streams.kafka.topics import create_topics
from streams.tools.loadgen import merged, plan, produce
from tests.factories import T0, order, payment
from tests.integration.conftest import consume_all, isolated
from tests.integration.conftest import produce as produce_raw
from tests.integration.workers import ROOT, start, stop

STACK = ROOT / "deploy" / "local" / "stack.sh"


@pytest.fixture
def s(base_settings):
    return writer_settings(base_settings)


def writer_settings(base_settings, *, with_topics: bool = True):
    """Isolated topics, and an isolated schema (search_path) in the real PostgreSQL."""
    tag = f"t{int(time.time() * 1000) % 10**10}"
    url = base_settings.database_url.get_secret_value()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {tag}")  # tag is ours: digits after a letter
    sep = "&" if "?" in url else "?"
    settings = isolated(base_settings, order_timeout="5s", grace="1s",
                        database_url=f"{url}{sep}options=-csearch_path%3D{tag}")
    if with_topics:
        create_topics(settings)
    migrate(settings.database_url.get_secret_value())
    return settings


def _db(s):
    return psycopg.connect(s.database_url.get_secret_value(), autocommit=True)


def _recovery(i: int, **over) -> Recovery:
    p = payment(payment_id=f"pay-{i}", order_id=f"ord-{i}", amount=Decimal("12.34"), **over)
    return Recovery(recovery_id=recovery_id_for(p.payment_id), order_id=p.order_id, payment=p,
                    deadline=T0 + timedelta(seconds=60), detected_at=T0 + timedelta(seconds=66))


def _produce_recoveries(s, items: list[Recovery]) -> None:
    produce_raw(s, s.recovery_topic, [(r.order_id.encode(), r.encode(), None) for r in items])


def _wait_rows(s, expected: int, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        try:
            with _db(s) as conn:
                n = conn.execute("SELECT count(*) FROM recovery_audit").fetchone()[0]
        except psycopg.OperationalError:
            n = -1
        if n >= expected:
            return n
        time.sleep(0.3)
    raise AssertionError(f"{n} audit rows after {timeout}s, expected {expected}")


def _assert_each_once(s, order_ids: set[str]) -> None:
    with _db(s) as conn:
        rows = conn.execute("SELECT order_id, count(*) FROM orders WHERE source = 'recovery' GROUP BY 1").fetchall()
        audit = conn.execute("SELECT count(*), count(DISTINCT recovery_id) FROM recovery_audit").fetchone()
    assert {r[0] for r in rows} == order_ids, "every missing order written"
    assert all(r[1] == 1 for r in rows)
    assert audit == (len(order_ids), len(order_ids)), "one audit row per recovery record"


def test_payments_to_rows_end_to_end_each_missing_order_exactly_once(s, tmp_path) -> None:
    now = int(time.time() * 1000)
    pays, ords, exp = plan(3_000, start_ms=now - 60_000, spacing_ms=15, timeout_ms=5_000, seed=21)
    produce(s, merged(pays, ords))
    join = start(s, ["join"], tmp_path / "join.log")
    writer = start(s, ["recover"], tmp_path / "recover.log")
    try:
        _wait_rows(s, len(exp.recovered))
        time.sleep(2)
        missing_orders = {pid.replace("p", "o", 1) for pid in exp.recovered}
        _assert_each_once(s, missing_orders)
        with _db(s) as conn:
            reconciled = {r[0] for r in conn.execute(
                "SELECT order_id FROM orders WHERE reconciled_at IS NOT NULL AND reconciled_order IS NOT NULL")}
            outcomes = dict(conn.execute("SELECT outcome, count(*) FROM recovery_audit GROUP BY 1").fetchall())
        assert reconciled == exp.late, "every late order reconciles its recovered row"
        assert outcomes == {"inserted": len(exp.recovered)}
    finally:
        assert stop(writer) == 0, (tmp_path / "recover.log").read_text()[-2000:]
        assert stop(join) == 0


def test_postgres_down_for_20s_mid_stream_then_every_row_exactly_once(s, tmp_path, base_settings) -> None:
    if s.database_url.get_secret_value().split("?")[0] != base_settings.database_url.get_secret_value().split("?")[0]:
        pytest.fail("this test stops the local stack's PostgreSQL")
    first = [_recovery(i) for i in range(2_000)]
    second = [_recovery(i) for i in range(2_000, 4_000)]
    writer = start(s, ["recover"], tmp_path / "recover.log")
    try:
        _produce_recoveries(s, first)
        _wait_rows(s, 1)
        subprocess.run(["bash", str(STACK), "pg-down"], check=True, capture_output=True)
        try:
            _produce_recoveries(s, second)
            time.sleep(20)
            assert writer.poll() is None, "the writer waits for the database; it does not exit"
        finally:
            subprocess.run(["bash", str(STACK), "pg-up"], check=True, capture_output=True)
        _wait_rows(s, 4_000, timeout=120)
        time.sleep(2)
        _assert_each_once(s, {r.order_id for r in first + second})
        log = (tmp_path / "recover.log").read_text()
        assert "PostgreSQL unavailable" in log and "nothing acknowledged" in log
    finally:
        assert stop(writer) == 0


def test_kill_9_mid_batch_then_restart_loses_and_doubles_nothing(s, tmp_path) -> None:
    items = [_recovery(i) for i in range(20_000)]
    _produce_recoveries(s, items)
    first = start(s, ["recover"], tmp_path / "recover-1.log")
    _wait_rows(s, 2_000)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    with _db(s) as conn:
        at_kill = conn.execute("SELECT count(*) FROM recovery_audit").fetchone()[0]
    assert at_kill < 20_000, "killed mid-stream"
    second = start(s, ["recover"], tmp_path / "recover-2.log")
    try:
        _wait_rows(s, 20_000, timeout=120)
        time.sleep(2)
        _assert_each_once(s, {r.order_id for r in items})
    finally:
        assert stop(second) == 0


def test_a_writer_joining_and_another_leaving_mid_stream_lose_and_double_nothing(s, tmp_path) -> None:
    """Two rebalances under load: a second writer joins while the first is mid-stream
    (faust suspends the first one's flow, cancelling any record it was blocked handing to
    its stream), then the first leaves and the second takes every partition."""
    total = 100_000
    items = [_recovery(i) for i in range(total)]
    _produce_recoveries(s, items)
    logs = [tmp_path / "recover-1.log", tmp_path / "recover-2.log"]
    first = start(s, ["recover"], logs[0], metrics_port=0)
    second = None

    def assignments(log) -> int:
        return log.read_text().count("Executing _on_partitions_assigned")

    try:
        _wait_rows(s, 3_000)
        second = start(s, ["recover"], logs[1], metrics_port=0)
        deadline = time.monotonic() + 60
        while not (assignments(logs[0]) >= 2 and assignments(logs[1]) >= 1) and time.monotonic() < deadline:
            time.sleep(0.1)
        with _db(s) as conn:
            at_join = conn.execute("SELECT count(*) FROM recovery_audit").fetchone()[0]
        assert assignments(logs[0]) >= 2 and assignments(logs[1]) >= 1, "the group rebalanced onto both writers"
        assert at_join < total, "the second writer joined mid-stream"
        _wait_rows(s, at_join + 5_000)  # both writing
        assert stop(first) == 0, logs[0].read_text()[-3000:]
        with _db(s) as conn:
            at_leave = conn.execute("SELECT count(*) FROM recovery_audit").fetchone()[0]
        assert at_leave < total, "the first writer left mid-stream"
        _wait_rows(s, total, timeout=120)
        time.sleep(2)
        _assert_each_once(s, {r.order_id for r in items})
    finally:
        if first.poll() is None:
            stop(first)
        if second is not None:
            assert stop(second) == 0, logs[1].read_text()[-3000:]


def test_order_already_present_is_left_unchanged_and_the_outcome_recorded(s, tmp_path) -> None:
    with _db(s) as conn:
        conn.execute("INSERT INTO orders (order_id, user_id, amount, currency, created_at) "
                     "VALUES ('ord-7', 'user-9', 99.5, 'USD', now())")
    _produce_recoveries(s, [_recovery(7), _recovery(8)])
    writer = start(s, ["recover"], tmp_path / "recover.log")
    try:
        _wait_rows(s, 2)
        with _db(s) as conn:
            row = conn.execute("SELECT user_id, amount, currency, source, recovery_id FROM orders "
                               "WHERE order_id = 'ord-7'").fetchone()
            outcomes = dict(conn.execute("SELECT order_id, outcome FROM recovery_audit").fetchall())
        assert row == ("user-9", Decimal("99.5000"), "USD", "order_service", None)
        assert outcomes == {"ord-7": "already_present", "ord-8": "inserted"}
    finally:
        assert stop(writer) == 0


@pytest.mark.parametrize("late_first", [False, True])
def test_late_order_reconciles_the_recovered_row(s, tmp_path, late_first: bool) -> None:
    rec = _recovery(5)
    real = order(order_id="ord-5", amount=Decimal("12.34"))
    late = LateOrder(order_id="ord-5", order=real, payment_id=rec.payment.payment_id, recovery_id=rec.recovery_id,
                     lateness_seconds=4.5)
    if late_first:
        produce_raw(s, s.late_topic, [(b"ord-5", late.encode(), None)])
    _produce_recoveries(s, [rec])
    if not late_first:
        produce_raw(s, s.late_topic, [(b"ord-5", late.encode(), None)])
    writer = start(s, ["recover"], tmp_path / "recover.log")
    try:
        _wait_rows(s, 1)
        deadline = time.monotonic() + 30
        row = None
        while time.monotonic() < deadline:
            with _db(s) as conn:
                row = conn.execute("SELECT reconciled_at, reconciled_order->>'order_id', recovery_id::text "
                                   "FROM orders WHERE order_id = 'ord-5'").fetchone()
            if row and row[0] is not None:
                break
            time.sleep(0.3)
        assert row is not None and row[0] is not None, "reconciled"
        assert row[1:] == ("ord-5", rec.recovery_id)
    finally:
        assert stop(writer) == 0


def test_poison_record_goes_to_the_dlq_and_the_records_after_it_are_written(s, tmp_path) -> None:
    produce_raw(s, s.recovery_topic, [(b"ord-1", b"{not json", None), (b"ord-1", b'{"recovery_id": 1}', None)])
    _produce_recoveries(s, [_recovery(1), _recovery(2)])
    writer = start(s, ["recover"], tmp_path / "recover.log")
    try:
        _wait_rows(s, 2)
        dead = [DeadLetter.decode(m.value()) for m in consume_all(s, s.dlq_topic, 2, timeout=30)]
        assert sorted(d.offset for d in dead) == [0, 1] and {d.source_topic for d in dead} == {s.recovery_topic}
        _assert_each_once(s, {"ord-1", "ord-2"})
    finally:
        assert stop(writer) == 0


def test_db_migrate_is_idempotent(s, capsys, tmp_path) -> None:
    from streams.cli import main
    from streams.db import migrations

    (tmp_path / "url").write_text(s.database_url.get_secret_value())
    assert main(["db", "migrate", f"--database-url-file={tmp_path / 'url'}"]) == 0
    assert "up to date" in capsys.readouterr().out
    with _db(s) as conn:
        assert conn.execute("SELECT count(*) FROM slipguard_schema_migrations").fetchone()[0] == len(migrations())


def test_db_migrate_reports_an_unreachable_database_in_one_line(capsys, tmp_path) -> None:
    from streams.cli import main

    (tmp_path / "url").write_text("postgresql://x:y@127.0.0.1:1/none")
    assert main(["db", "migrate", f"--database-url-file={tmp_path / 'url'}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "slipguard db migrate" in err




def test_writer_reads_committed_only_so_aborted_recoveries_are_never_written(s, tmp_path) -> None:
    from confluent_kafka import Producer

    from streams.kafka import config

    p = Producer(config.producer(s, transactional_id=f"{s.join_group}-aborting"))
    p.init_transactions(30)
    p.begin_transaction()
    aborted = _recovery(1)
    p.produce(s.recovery_topic, aborted.encode(), aborted.order_id)
    p.flush(30)
    p.abort_transaction(30)
    _produce_recoveries(s, [_recovery(2)])
    writer = start(s, ["recover"], tmp_path / "recover.log")
    try:
        _wait_rows(s, 1)
        time.sleep(2)
        _assert_each_once(s, {"ord-2"})
    finally:
        assert stop(writer) == 0


def test_writer_serves_metrics_health_and_readiness(s, tmp_path) -> None:
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _produce_recoveries(s, [_recovery(i) for i in range(3)])
    writer = start(s, ["recover"], tmp_path / "recover.log", metrics_port=port)
    try:
        _wait_rows(s, 3)
        deadline = time.monotonic() + 20
        ready = 0
        while time.monotonic() < deadline and ready != 200:
            time.sleep(0.5)
            try:
                ready = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status
            except OSError:
                ready = 0
        assert ready == 200
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        assert 'slipguard_writer_rows_total{outcome="inserted"} 3.0' in text
        assert "slipguard_writer_batch_seconds_count" in text
        assert f'slipguard_rebalances_total{{group="{s.recover_group}",kind="assign"}}' in text
        assert f'slipguard_assigned_partitions{{group="{s.recover_group}",topic="{s.recovery_topic}"}} 4.0' in text
    finally:
        assert stop(writer) == 0


def test_nothing_is_acknowledged_while_postgres_is_down_even_across_kill_9(s, tmp_path, base_settings) -> None:
    """Records read during an outage stay unacknowledged: the group's committed offsets do not
    move, and a writer killed meanwhile loses none of them."""
    from streams.ops.lag import group_lag

    _produce_recoveries(s, [_recovery(i) for i in range(100)])
    first = start(s, ["recover"], tmp_path / "recover-1.log")
    _wait_rows(s, 100)
    time.sleep(2.5)  # let faust commit the offsets of what was written
    before = {(r.topic, r.partition): r.current_offset for r in group_lag(s, [s.recover_group], with_seconds=False)}
    subprocess.run(["bash", str(STACK), "pg-down"], check=True, capture_output=True)
    try:
        _produce_recoveries(s, [_recovery(i) for i in range(100, 600)])
        deadline = time.monotonic() + 30
        while "PostgreSQL unavailable" not in (tmp_path / "recover-1.log").read_text():
            assert time.monotonic() < deadline, "the writer read the records and tried to write them"
            time.sleep(0.2)
        time.sleep(3)  # three commit intervals: anything acknowledged would now be committed
        during = {(r.topic, r.partition): r.current_offset for r in group_lag(s, [s.recover_group], with_seconds=False)}
        assert during == before, "no offset moves while the rows cannot be written"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        subprocess.run(["bash", str(STACK), "pg-up"], check=True, capture_output=True)
    second = start(s, ["recover"], tmp_path / "recover-2.log")
    try:
        _wait_rows(s, 600, timeout=120)
        time.sleep(1)
        _assert_each_once(s, {f"ord-{i}" for i in range(600)})
    finally:
        assert stop(second) == 0


def test_a_record_postgres_rejects_goes_to_the_dlq_and_the_rest_of_its_batch_is_written(s, tmp_path) -> None:
    with _db(s) as conn:  # stands in for any row the database refuses (a constraint, a bad value)
        conn.execute("""
            CREATE FUNCTION refuse_ord_13() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.order_id = 'ord-13' THEN
                    RAISE EXCEPTION 'refused by test' USING ERRCODE = 'data_exception';
                END IF;
                RETURN NEW;
            END $$""")
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION refuse_ord_13()")
    _produce_recoveries(s, [_recovery(i) for i in range(10, 20)])
    writer = start(s, ["recover"], tmp_path / "recover.log")
    try:
        _wait_rows(s, 9)
        dead = [DeadLetter.decode(m.value()) for m in consume_all(s, s.dlq_topic, 1, timeout=30)]
        assert len(dead) == 1 and "refused by test" in dead[0].error
        assert Recovery.decode(__import__("base64").b64decode(dead[0].value_b64 or "")).order_id == "ord-13"
        _assert_each_once(s, {f"ord-{i}" for i in range(10, 20)} - {"ord-13"})
        assert writer.poll() is None, "the writer goes on"
    finally:
        assert stop(writer) == 0


def test_writer_started_before_its_topics_exist_picks_them_up(base_settings, tmp_path) -> None:
    """Topics created after the writer started (or not yet in a just-started broker's
    metadata): the writer waits for them rather than joining its group with nothing
    assigned (the demo once sat idle for minutes that way)."""
    s = writer_settings(base_settings, with_topics=False)
    writer = start(s, ["recover"], tmp_path / "recover.log")
    try:
        time.sleep(3)
        assert writer.poll() is None
        create_topics(s)
        items = [_recovery(i) for i in range(50)]
        _produce_recoveries(s, items)
        _wait_rows(s, 50, timeout=45)
        _assert_each_once(s, {r.order_id for r in items})
    finally:
        assert stop(writer) == 0, (tmp_path / "recover.log").read_text()[-2000:]


def _admin(base_settings):
    return psycopg.connect(base_settings.database_url.get_secret_value(), autocommit=True)


def _set_read_only(base_settings, on: bool) -> None:
    """What a failover looks like to a client still connected to the old primary, now a
    standby: every write fails with ReadOnlySqlTransaction."""
    with _admin(base_settings) as conn:
        conn.execute(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}")
        conn.execute("SELECT pg_reload_conf()")


def test_writer_rides_out_a_read_only_database_for_20s(s, tmp_path, base_settings) -> None:
    first = [_recovery(i) for i in range(1_000)]
    second = [_recovery(i) for i in range(1_000, 3_000)]
    log = tmp_path / "recover.log"
    writer = start(s, ["recover"], log)
    try:
        _produce_recoveries(s, first)
        _wait_rows(s, 1_000)
        _set_read_only(base_settings, True)
        try:
            _produce_recoveries(s, second)
            time.sleep(20)
            assert writer.poll() is None, "the writer waits for a writable primary; it does not exit: " + \
                log.read_text()[-2000:]
            assert _wait_rows(s, 0) == 1_000, "nothing is written while the database is read-only"
        finally:
            _set_read_only(base_settings, False)
        _wait_rows(s, 3_000, timeout=120)
        time.sleep(2)
        _assert_each_once(s, {r.order_id for r in first + second})
        assert "ReadOnlySqlTransaction" in log.read_text() or "read-only" in log.read_text()
    finally:
        assert stop(writer) == 0, log.read_text()[-3000:]


def test_writer_connections_cut_mid_batch_lose_and_double_nothing(s, tmp_path, base_settings) -> None:
    items = [_recovery(i) for i in range(20_000)]
    log = tmp_path / "recover.log"
    _produce_recoveries(s, items)
    writer = start(s, ["recover"], log)
    cuts = 0
    try:
        _wait_rows(s, 1)
        with _admin(base_settings) as conn:
            for _ in range(8):  # cut every connection of the writer's (its schema's) sessions, repeatedly
                rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                                    "AND backend_type = 'client backend'").fetchall()
                cuts += sum(1 for (ok,) in rows if ok)
                time.sleep(0.7)
        _wait_rows(s, 20_000, timeout=120)
        time.sleep(2)
        _assert_each_once(s, {r.order_id for r in items})
        assert cuts >= 1 and writer.poll() is None, log.read_text()[-3000:]
    finally:
        assert stop(writer) == 0, log.read_text()[-3000:]


def test_writer_without_its_tables_stops_with_one_line(base_settings, tmp_path) -> None:
    s = writer_settings(base_settings)
    with _db(s) as conn:
        conn.execute("DROP TABLE late_orders, recovery_audit, orders CASCADE")
    _produce_recoveries(s, [_recovery(1)])
    log = tmp_path / "recover.log"
    writer = start(s, ["recover"], log)
    assert writer.wait(90) == 1
    text = log.read_text()
    assert "slipguard recover: PostgreSQL refused the writer's statements (UndefinedTable" in text, text[-3000:]
    assert "run `slipguard db migrate`" in text


def test_a_dead_letter_the_dlq_refuses_stops_the_writer_with_one_line_and_nothing_after_it_acknowledged(
        s, tmp_path) -> None:
    """A DLQ topic configured smaller than a letter refuses it (MESSAGE_TOO_LARGE, not
    retriable). The writer used to keep the error in the batch's task until another batch
    came; with none coming it stayed up, silent, acknowledging nothing."""
    import base64
    import os

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    from streams.kafka import config
    from tests.integration.workers import committed_total

    entry = ConfigEntry("max.message.bytes", "4096", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ConfigResource.Type.TOPIC, s.dlq_topic, incremental_configs=[entry])
    admin = AdminClient(config.admin(s))
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
    poison = b'{"pad":"' + base64.b64encode(os.urandom(30_000)) + b'"}'  # its letter: ~40 KB, gzip or not
    p = Producer(config.producer(s))
    for value in (_recovery(1).encode(), poison, _recovery(2).encode()):
        p.produce(s.recovery_topic, value, b"k", partition=0)
    assert p.flush(30) == 0
    log = tmp_path / "recover.log"
    writer = start(s, ["recover"], log)
    try:
        assert writer.wait(60) == 1, log.read_text()[-3000:]
    except subprocess.TimeoutExpired:
        stop(writer, signal.SIGKILL)
        raise AssertionError(f"the writer did not stop in 60 s: {log.read_text()[-2000:]}") from None
    lines = [line for line in log.read_text().splitlines() if line.startswith("slipguard recover: ")]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"slipguard recover: the dead letter of {s.recovery_topic}:0:1 was not delivered to ")
    assert "(MessageSizeTooLargeError" in lines[0] and "nothing of this batch" in lines[0], lines
    assert committed_total(s, s.recover_group, [s.recovery_topic], s.partitions) in (0, 1), "nothing past it"
    with _db(s) as conn:
        assert conn.execute("SELECT order_id FROM orders").fetchall() in ([], [("ord-1",)]), "nothing after it"


def test_a_payment_two_hours_old_recovered_in_a_catch_up_still_reconciles_its_late_order(s, tmp_path) -> None:
    """LATE_HORIZON (1 h) runs from the recovery, by the worker's clock. A payment two hours
    old, in a backlog the join catches up, is recovered now; its order, produced seconds
    later (stamped long past the deadline), goes to orders.late and reconciles the row."""
    two_hours_ago = int(time.time() * 1000) - 2 * 3_600_000
    p = payment(payment_id="old-pay", order_id="old-ord", amount=Decimal("12.34"))
    produce_raw(s, s.payments_topic, [(b"old-ord", p.encode(), two_hours_ago)])
    join = start(s, ["join"], tmp_path / "join.log", late_horizon="1h")
    writer = start(s, ["recover"], tmp_path / "recover.log")
    try:
        _wait_rows(s, 1)  # recovered and written
        time.sleep(5)
        real = order(order_id="old-ord", amount=Decimal("12.34"))
        produce_raw(s, s.orders_topic, [(b"old-ord", real.encode(), int(time.time() * 1000))])
        lates = consume_all(s, s.late_topic, 1, timeout=30)
        assert [LateOrder.decode(m.value()).payment_id for m in lates] == ["old-pay"]
        deadline = time.monotonic() + 30
        row = None
        while time.monotonic() < deadline and not (row and row[0]):
            with _db(s) as conn:
                row = conn.execute("SELECT reconciled_at FROM orders WHERE order_id = 'old-ord'").fetchone()
            time.sleep(0.3)
        assert row is not None and row[0] is not None, "the recovered row is reconciled with the real order"
    finally:
        assert stop(join) == 0, (tmp_path / "join.log").read_text()[-3000:]
        assert stop(writer) == 0
