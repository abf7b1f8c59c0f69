"""The join group's protocol: KIP-848 (`consumer`) by default where the broker offers it,
`classic` where it does not, and the group's timeouts under KIP-848.

Brokers that do not offer KIP-848 are second real Kafka brokers started by the test: an
Apache Kafka 3.9.1 (deploy/local/pom-kafka3.xml), and the local stack's Kafka 4.x build
with `group.coordinator.rebalance.protocols=classic`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    ResourceType,
)

from streams.kafka import config
from streams.kafka.groups import tune_group_timeouts
from streams.kafka.topics import create_topics
from tests.integration.conftest import isolated
from tests.integration.test_join import _historical, _owned, _wait_for
from tests.integration.workers import ROOT, assert_recovered_once, start, stop, wait_until_done

PORT, CONTROLLER_PORT = 19192, 19193
STACK = Path(os.environ.get("SLIPGUARD_STACK_DIR", ROOT / ".stack"))
# Brokers that do not offer KIP-848: a Kafka 3.9 (`stack.sh kafka3-fetch`; librdkafka, asked
# for the consumer protocol there, waits forever without an error), and a Kafka 4.x that
# leaves `consumer` out of its protocols (it refuses the first heartbeat).
OLD_BROKERS = {"kafka-3.9": (STACK / "kafka-3" / "libs", []),
               "kafka-4-classic-only": (STACK / "kafka" / "libs", ["group.coordinator.rebalance.protocols=classic"])}


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def _broker(libs: Path, extra: list[str], home: Path) -> Iterator[str]:
    """A freshly formatted single-node KRaft broker from `libs` on its own ports."""
    assert (libs / ".complete").exists(), f"no Kafka build at {libs}: run `make test` (it fetches it)"
    assert not _port_open(PORT), f"port {PORT} is busy"
    props = home / "server.properties"
    props.write_text("\n".join([
        "process.roles=broker,controller", "node.id=1", f"controller.quorum.voters=1@127.0.0.1:{CONTROLLER_PORT}",
        f"listeners=PLAINTEXT://127.0.0.1:{PORT},CONTROLLER://127.0.0.1:{CONTROLLER_PORT}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{PORT}", "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT", f"log.dirs={home / 'data'}", "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1", "offsets.topic.num.partitions=1",
        "transaction.state.log.replication.factor=1", "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=1", "group.initial.rebalance.delay.ms=0", *extra, ""]))
    java = [shutil.which("java") or "java", "-cp", f"{libs}/*",
            f"-Dlog4j2.configurationFile={ROOT / 'deploy/local/log4j2.properties'}",
            f"-Dkafka.logs.dir={home / 'logs'}"]
    cluster = subprocess.run([*java, "kafka.tools.StorageTool", "random-uuid"], capture_output=True, text=True,
                             check=True).stdout.strip()
    subprocess.run([*java, "kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(props)],
                   capture_output=True, check=True)
    with open(home / "stdout.log", "wb") as out:
        broker = subprocess.Popen([*java[:1], "-Xms256m", "-Xmx512m", *java[1:], "kafka.Kafka", str(props)],
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        bootstrap = f"127.0.0.1:{PORT}"
        deadline = time.monotonic() + 60
        while True:
            assert broker.poll() is None, (home / "stdout.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the broker did not start in 60 s"
            if _port_open(PORT):
                try:
                    AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5)
                    break
                except Exception:  # noqa: BLE001 (not up yet)
                    pass
            time.sleep(0.5)
        yield bootstrap
    finally:
        broker.send_signal(signal.SIGKILL)
        broker.wait(30)


@pytest.fixture(scope="module", params=sorted(OLD_BROKERS))
def old_broker(request, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(which, bootstrap servers)"""
    libs, extra = OLD_BROKERS[request.param]
    with _broker(libs, extra, tmp_path_factory.mktemp(request.param)) as bootstrap:
        yield request.param, bootstrap


def _on(base_settings, bootstrap: str, **over):
    s = isolated(base_settings, bootstrap_servers=bootstrap, kafka_security_protocol="PLAINTEXT",
                 order_timeout="5s", grace="1s", **over)
    create_topics(s)
    return s


def test_auto_joins_with_classic_where_the_broker_offers_no_kip_848(base_settings, old_broker, tmp_path) -> None:
    """The default (`auto`) on a broker without KIP-848: one warning line, then the classic
    protocol, and the join works: every recovery once. (On Kafka 3.9 the old code waited
    forever: librdkafka never reports the missing API.)"""
    s = _on(base_settings, old_broker[1])
    exp = _historical(s, 2_000, seed=61)
    log = tmp_path / "join.log"
    worker = start(s, ["join"], log, group_protocol=None)  # the default
    try:
        _wait_for(lambda: _owned(log) == [0, 1, 2, 3], "the worker owns every partition", timeout=60)
        wait_until_done(s, exp.payments + exp.orders, timeout=60)
        assert_recovered_once(s, exp.recovered)
        text = log.read_text()
        assert text.count("does not offer the KIP-848 consumer group protocol") == 1, text[-3000:]
        assert "joins with the classic protocol" in text and "Traceback" not in text, text[-3000:]
        assert worker.poll() is None, text[-3000:]
    finally:
        assert stop(worker) == 0, log.read_text()[-3000:]


def test_asking_for_kip_848_on_a_broker_without_it_stops_with_one_line(base_settings, old_broker,
                                                                       tmp_path) -> None:
    s = _on(base_settings, old_broker[1])
    log = tmp_path / "join.log"
    worker = start(s, ["join"], log, group_protocol="consumer")
    try:
        assert worker.wait(60) == 1, log.read_text()[-3000:]
    finally:
        stop(worker)
    text = log.read_text()
    assert "the broker refuses the KIP-848 consumer group protocol" in text, text[-3000:]
    assert "SLIPGUARD_GROUP_PROTOCOL=classic" in text and "Traceback" not in text, text[-3000:]


def _group_config(bootstrap: str, group: str) -> dict[str, tuple[str, int]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ResourceType.GROUP, group)
    entries = admin.describe_configs([resource], request_timeout=10)[resource].result()
    return {name: (entries[name].value, entries[name].source)
            for name in ("consumer.session.timeout.ms", "consumer.heartbeat.interval.ms")}


def test_the_join_asks_for_its_timeouts_as_group_configs_and_keeps_an_operators_own(base_settings,
                                                                                    old_broker) -> None:
    """Under KIP-848 the broker owns the session timeout (45 s by default): the join asks
    for its 10 s and 1 s as the group's configs, keeps values an operator set for the
    group, and says in one line what a crash costs where the broker refuses."""
    s = isolated(base_settings)
    group = s.join_group
    said, session_s = tune_group_timeouts(s, group)
    assert session_s == 10.0
    assert _group_config(s.bootstrap_servers, group) == {
        "consumer.session.timeout.ms": ("10000", ConfigSource.GROUP_CONFIG.value),
        "consumer.heartbeat.interval.ms": ("1000", ConfigSource.GROUP_CONFIG.value)}, said
    assert "session timeout 10s, heartbeat 1s (set as group configs)" in said
    assert "session timeout 10s" in tune_group_timeouts(s, group)[0]  # asked again: unchanged

    own = f"own-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(config.admin(s))
    entry = ConfigEntry("consumer.session.timeout.ms", "20000", incremental_operation=AlterConfigOpType.SET)
    for future in admin.incremental_alter_configs([ConfigResource(ResourceType.GROUP, own,
                                                                  incremental_configs=[entry])]).values():
        future.result(10)
    said, session_s = tune_group_timeouts(s, own)
    assert "the group's own configs, kept" in said and "session timeout 20s" in said and session_s == 20.0, said
    assert _group_config(s.bootstrap_servers, own)["consumer.session.timeout.ms"][0] == "20000"

    # A Kafka 4 broker with the default floors (45 s, 5 s) refuses 10 s and 1 s; a Kafka 3
    # broker has no group configs. Either way: one line, and the cost.
    which, bootstrap = old_broker
    plain = isolated(base_settings, bootstrap_servers=bootstrap, kafka_security_protocol="PLAINTEXT")
    said, session_s = tune_group_timeouts(plain, plain.join_group)
    assert session_s == 45.0
    if which == "kafka-3.9":
        assert "cannot read its configs" in said and "45 s by default" in said, said
    else:
        assert "the broker refused session timeout 10s and heartbeat 1s" in said, said
        assert "partitions move after its session timeout, 45s" in said, said
