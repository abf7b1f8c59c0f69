"""Secured clusters: the join (exactly-once), the writer and the lag exporter over SASL_SSL
(SCRAM-SHA-512 on TLS from the stack's CA) on the real broker with the StandardAuthorizer,
each principal granted only its role's ACLs (streams/kafka/acls.py); the writer on
PostgreSQL as a role with only its grants, over TLS with sslmode=verify-full; secrets
given as files and found nowhere in what the run produced. Without any one of the join's
ACLs the join stops with one line naming the permission and the resource."""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from schemas import Anomaly, DeadLetter
from streams.db import migrate
from streams.kafka import acls, config
from streams.kafka.topics import create_topics
from streams.settings import Settings
from tests.integration.conftest import consume_all, isolated, produce
from tests.integration.test_join import _historical
from tests.integration.workers import ROOT, assert_recovered_once, env_for, stop, wait_until_done

STACK = Path(os.environ.get("SLIPGUARD_STACK_DIR", ROOT / ".stack"))
CA = STACK / "tls" / "ca.pem"
SECURE = f"127.0.0.1:{os.environ.get('SLIPGUARD_KAFKA_SECURE_PORT', '9094')}"


class Secured:
    """One test's principals (SCRAM users of its own), their settings and secret files."""

    def __init__(self, plain, tmp: Path) -> None:
        if not CA.exists():
            pytest.fail(f"{CA} not found: the secured listener is started by `make up` (deploy/local/stack.sh)")
        self.plain, self.tmp = plain, tmp
        self.admin = AdminClient(config.admin(plain))  # the plain listener's principal is the stack's super user
        self.tag = plain.join_group.split("-")[0]
        self.passwords = {role: secrets.token_hex(16) for role in acls.ROLES}
        ups = [UserScramCredentialUpsertion(self.user(role), ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                            self.passwords[role].encode()) for role in acls.ROLES]
        for future in self.admin.alter_user_scram_credentials(ups, request_timeout=30).values():
            future.result()
        for role in acls.ROLES:
            (tmp / f"{role}.password").write_text(self.passwords[role])

    def user(self, role: str) -> str:
        return f"{self.tag}-{role}"

    def settings(self, role: str):
        return self.plain.derive(bootstrap_servers=SECURE, kafka_security_protocol="SASL_SSL",
                                 kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username=self.user(role),
                                 kafka_sasl_password=self.passwords[role], kafka_ssl_ca_location=str(CA))

    def grant(self, role: str, *, leave_out: acls.Grant | None = None) -> None:
        wanted = [b for b, g in zip(acls.bindings(self.plain, role, f"User:{self.user(role)}"),
                                    acls.grants(self.plain, role), strict=True) if g != leave_out]
        for future in self.admin.create_acls(wanted, request_timeout=30).values():
            future.result()

    def revoke_all(self) -> None:
        for role in acls.ROLES:
            f = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{self.user(role)}", None,
                                 AclOperation.ANY, AclPermissionType.ANY)
            for future in self.admin.delete_acls([f], request_timeout=30).values():
                future.result()

    def start(self, role: str, command: list[str], log: Path, **over: object) -> subprocess.Popen:
        """A slipguard process as `role`; its password from a file, never in its environment."""
        env = env_for(self.settings(role), kafka_sasl_password=None,
                      kafka_sasl_password_file=self.tmp / f"{role}.password", **over)
        return subprocess.Popen([sys.executable, "-m", "streams", *command], env=env, cwd=ROOT,
                                stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)


@pytest.fixture
def secured(base_settings, tmp_path):
    sec = Secured(isolated(base_settings, order_timeout="5s", grace="1s"), tmp_path)
    yield sec
    sec.revoke_all()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _documented_grants() -> list[str]:
    """The writer's GRANT statements as the docs give them (docs/concepts/writer.md)."""
    section = (ROOT / "docs" / "concepts" / "writer.md").read_text()
    block = section[section.index("```sql") + 6:section.index("```", section.index("```sql") + 6)]
    grants = [line for line in block.splitlines() if line.startswith("GRANT ")]
    assert len(grants) >= 3, block
    return grants


def _writer_database(plain, tmp: Path) -> tuple[str, str]:
    """A schema of the test's own, migrated as the owner, and a role with only the
    writer's grants, the documented statements run as they are (in the test's schema, for
    the test's role); returns the writer's verify-full URL and its password."""
    tag = plain.join_group.split("-")[0]
    owner = plain.database_url.get_secret_value()
    password = secrets.token_hex(12)
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {tag}")
        conn.execute(f"CREATE ROLE {tag}_writer LOGIN PASSWORD '{password}'")
    sep = "&" if "?" in owner else "?"
    in_schema = f"{owner}{sep}options=-csearch_path%3D{tag}"
    migrate(in_schema)
    with psycopg.connect(in_schema, autocommit=True) as conn:
        for grant in _documented_grants():
            conn.execute(grant.replace("SCHEMA public", f"SCHEMA {tag}")
                         .replace("slipguard_writer", f"{tag}_writer"))  # type: ignore[arg-type]
    port = re.search(r":(\d+)/", owner).group(1)  # type: ignore[union-attr]
    url = (f"postgresql://{tag}_writer:{password}@localhost:{port}/slipguard?sslmode=verify-full"
           f"&sslrootcert={CA}&options=-csearch_path%3D{tag}")
    return url, password


def _assert_reconciled_by_the_writer_alone(url: str, late: set[str]) -> None:
    """The late orders reconciled their rows under the writer's grants (UPDATE of two
    columns of orders), and with them the role can change no other column or table."""
    assert late, "the workload has late orders to reconcile"
    deadline = time.monotonic() + 60
    reconciled: set[str] = set()
    while reconciled != late and time.monotonic() < deadline:
        time.sleep(0.5)
        with psycopg.connect(url) as conn:
            reconciled = {r[0] for r in conn.execute("SELECT order_id FROM orders WHERE reconciled_at IS NOT NULL")}
    assert reconciled == late, f"{len(late - reconciled)} late orders did not reconcile under the writer's role"
    for statement in ("UPDATE orders SET amount = amount + 1", "UPDATE orders SET user_id = 'x'",
                      "UPDATE late_orders SET order_id = 'x'", "UPDATE recovery_audit SET outcome = 'inserted'",
                      "DELETE FROM orders"):
        with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)  # type: ignore[arg-type]


def test_join_writer_and_lag_exporter_work_over_sasl_ssl_with_only_their_acls(secured, tmp_path) -> None:
    s = secured.plain
    for role in acls.ROLES:
        secured.grant(role)
    made = secured.start("admin", ["topics", "create"], tmp_path / "topics.log")
    assert made.wait(60) == 0, (tmp_path / "topics.log").read_text()
    exp = _historical(s, 1_500, seed=71)  # produced by another service (here: the plain listener)
    produce(s, s.payments_topic, [(b"o-bad", b'{"payment_id": "p-bad", "metadata": {"phone": "138-0000"}}', None)])

    url, db_password = _writer_database(s, tmp_path)
    (tmp_path / "db.url").write_text(url)
    with psycopg.connect(url) as conn:  # the writer's own connection is TLS, and verified
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    port = _free_port()
    logs = {name: tmp_path / f"{name}.log" for name in ("join", "writer", "lag")}
    procs = {
        "join": secured.start("join", ["join"], logs["join"], processing_guarantee="exactly_once",
                              minimise_personal_data="true"),
        "writer": secured.start("writer", ["recover"], logs["writer"], database_url=None,
                                database_url_file=tmp_path / "db.url"),
        "lag": secured.start("lag", ["lag", "--serve", "--interval", "1"], logs["lag"], metrics_port=port),
    }
    try:
        wait_until_done(s, exp.payments + exp.orders + 1, timeout=120)
        assert_recovered_once(s, exp.recovered)
        anomalies = [Anomaly.decode(m.value()) for m in consume_all(s, s.anomalies_topic, sum(exp.anomalies.values()))]
        assert anomalies and all(p.metadata is None for a in anomalies for p in a.payments), "metadata left out"
        assert all(a.order is None or a.order.metadata is None for a in anomalies)
        dead = [m.value() for m in consume_all(s, s.dlq_topic, 1)]
        assert len(dead) == 1 and DeadLetter.decode(dead[0]).value_redacted and b"138-0000" not in dead[0]
        deadline = time.monotonic() + 90
        rows: list = []
        while time.monotonic() < deadline:
            with psycopg.connect(url) as conn:
                rows = conn.execute("SELECT payment_id FROM recovery_audit").fetchall()
            if len(rows) >= len(exp.recovered):
                break
            time.sleep(0.5)
        assert Counter(r[0] for r in rows).most_common(1)[0][1] == 1 and len(rows) == len(exp.recovered)
        _assert_reconciled_by_the_writer_alone(url, exp.late)
        page = ""
        deadline = time.monotonic() + 30
        while f'group="{s.join_group}"' not in page and time.monotonic() < deadline:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                time.sleep(0.5)
        assert re.search(rf'slipguard_consumer_lag_messages{{[^}}]*group="{s.join_group}"', page), page[-2000:]
        assert re.search(rf'slipguard_consumer_lag_messages{{[^}}]*group="{s.recover_group}"', page), page[-2000:]
        for name, proc in procs.items():
            assert proc.poll() is None, logs[name].read_text()[-3000:]
            titles = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
            assert not any(p in titles for p in [*secured.passwords.values(), db_password])
    finally:
        codes = {name: stop(proc) for name, proc in procs.items()}
    assert codes == {"join": 0, "writer": 0, "lag": 0}, {n: logs[n].read_text()[-2000:] for n in logs}
    produced = "".join(log.read_text() for log in tmp_path.glob("*.log")) + page
    for secret in [*secured.passwords.values(), db_password]:
        assert secret not in produced, "a secret appeared in a log or on /metrics"
    for log in logs.values():
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def _grant_id(g: acls.Grant) -> str:
    return f"{g.operation}-{g.resource}-{g.name}"


@pytest.mark.parametrize("missing", acls.grants(Settings(), "join"), ids=_grant_id)
def test_without_any_one_of_its_acls_the_join_stops_with_one_line_naming_it(secured, tmp_path, missing) -> None:
    s = secured.plain
    create_topics(s)
    _historical(s, 300, seed=72)  # records to read, and recoveries to write (and their state to the changelog)
    secured.grant("join", leave_out=_same(missing, s))
    log = tmp_path / "join.log"
    proc = secured.start("join", ["join"], log, processing_guarantee="exactly_once")
    try:
        code = proc.wait(90)
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"the join kept running without {missing.describe()}:\n{log.read_text()[-3000:]}")
    _assert_one_denied_line(log.read_text(), "slipguard join:", code, _same(missing, s))


def _assert_one_denied_line(text: str, prefix: str, code: int, grant: acls.Grant) -> None:
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert code == 1 and len(lines) == 1, text[-3000:]
    kind = {"TOPIC": "topic", "GROUP": "group", "TRANSACTIONAL_ID": "transactional id"}[grant.resource]
    op = "".join(p.capitalize() for p in grant.operation.split("_"))
    assert "Kafka denied" in lines[0] and op in lines[0] and f"{kind} {grant.name}" in lines[0], lines[0]
    assert "Traceback" not in text, text[-3000:]


def _same(grant: acls.Grant, s, role: str = "join") -> acls.Grant:
    """The grant of the default settings, under this test's (prefixed) names."""
    defaults = acls.grants(Settings(), role)
    return acls.grants(s, role)[defaults.index(grant)]


@pytest.mark.parametrize("missing", acls.grants(Settings(), "writer"), ids=_grant_id)
def test_without_any_one_of_its_acls_the_writer_stops_with_one_line_naming_it(secured, tmp_path, missing) -> None:
    s = secured.plain
    create_topics(s)
    secured.grant("writer", leave_out=_same(missing, s, "writer"))
    url, _ = _writer_database(s, tmp_path)
    (tmp_path / "db.url").write_text(url)
    log = tmp_path / "writer.log"
    proc = secured.start("writer", ["recover"], log, database_url=None, database_url_file=tmp_path / "db.url")
    try:
        code = proc.wait(90)
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"the writer kept running without {missing.describe()}:\n{log.read_text()[-3000:]}")
    _assert_one_denied_line(log.read_text(), "slipguard recover:", code, _same(missing, s, "writer"))


@pytest.mark.parametrize("missing", acls.grants(Settings(), "lag"), ids=_grant_id)
def test_without_any_one_of_its_acls_lag_says_which_in_one_line(secured, tmp_path, missing) -> None:
    s = secured.plain
    create_topics(s)
    _historical(s, 200, seed=73)
    for group in (s.join_group, s.recover_group):  # both groups have committed offsets to read
        with_offsets = Consumer(config.consumer(s, group, **{"enable.auto.commit": False}))
        with_offsets.commit(offsets=[TopicPartition(t, p, 1) for t in (s.payments_topic, s.orders_topic,
                                                                       s.recovery_topic, s.late_topic)
                                     for p in range(s.partitions)], asynchronous=False)
        with_offsets.close()
    secured.grant("lag", leave_out=_same(missing, s, "lag"))
    log = tmp_path / "lag.log"
    proc = secured.start("lag", ["lag"], log)
    code = proc.wait(120)
    _assert_one_denied_line(log.read_text(), "slipguard lag:", code, _same(missing, s, "lag"))


@pytest.mark.parametrize("missing", acls.grants(Settings(), "admin"), ids=_grant_id)
def test_without_any_one_of_its_acls_topics_create_says_which_in_one_line(secured, tmp_path, missing) -> None:
    s = secured.plain
    secured.grant("admin", leave_out=_same(missing, s, "admin"))
    log = tmp_path / "topics.log"
    code = secured.start("admin", ["topics", "create"], log).wait(60)
    _assert_one_denied_line(log.read_text(), "slipguard topics create:", code, _same(missing, s, "admin"))
