"""The local three-broker cluster (deploy/local/stack.sh cluster-up) as the fault tests see
it: its nodes (killed, stopped, started, frozen through stack.sh), its proxies (Toxiproxy),
and who leads what and who coordinates whom, asked of the brokers themselves."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streams.kafka import config
from streams.settings import Settings
from tests.cluster.toxiproxy import Toxiproxy

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "deploy" / "local" / "stack.sh"
DESCRIPTION = ROOT / ".stack" / "cluster" / "cluster.json"
NODES = (1, 2, 3)


@dataclass
class Cluster:
    bootstrap: str  # the shared proxies
    sets: dict[int, str]  # per-client proxy sets: bootstrap of each
    toxiproxy: Toxiproxy
    proxy_names: dict[tuple[int, int], str]  # (node, set; 0 = shared) -> proxy

    @classmethod
    def described(cls) -> Cluster:
        d = json.loads(DESCRIPTION.read_text())
        return cls(d["bootstrap"], {int(k): v for k, v in d["sets"].items()}, Toxiproxy(d["toxiproxy"]),
                   {(p["node"], p["set"]): p["name"] for p in d["proxies"]})

    # ------------------------------------------------------------ nodes
    def node(self, action: str, node: int) -> float:
        """stack.sh cluster-broker ACTION NODE; returns how long it took (s)."""
        started = time.monotonic()
        done = subprocess.run(["bash", str(STACK), "cluster-broker", action, str(node)], capture_output=True,
                              text=True, timeout=300, check=False)
        assert done.returncode == 0, f"cluster-broker {action} {node}: {done.stdout}{done.stderr}"
        return time.monotonic() - started

    def running(self) -> set[int]:
        done = subprocess.run(["bash", str(STACK), "cluster-status"], capture_output=True, text=True, timeout=30,
                              check=True)
        return {n for n in NODES if f"cluster node {n}: running" in done.stdout}

    # ------------------------------------------------------------ proxies
    def proxies_of_set(self, k: int) -> list[str]:
        return [self.proxy_names[(n, k)] for n in NODES]

    def proxies_of_node(self, node: int) -> list[str]:
        return [name for (n, _k), name in self.proxy_names.items() if n == node]

    # ------------------------------------------------------------ who does what
    def admin(self, s: Settings) -> AdminClient:
        return AdminClient(config.admin(s.derive(bootstrap_servers=self.bootstrap)))

    def leaders(self, s: Settings, topic: str) -> dict[int, int]:
        """partition -> leading node."""
        md = self.admin(s).list_topics(topic, timeout=10)
        return {p: meta.leader for p, meta in md.topics[topic].partitions.items()}

    def fully_replicated(self, s: Settings) -> bool:
        """Every partition of every topic (the internal ones included) has a leader and all
        its replicas in sync."""
        md = self.admin(s).list_topics(timeout=10)
        return all(meta.leader >= 0 and set(meta.isrs) == set(meta.replicas)
                   for t in md.topics.values() for meta in t.partitions.values())

    def wait_fully_replicated(self, s: Settings, timeout: float = 120) -> float:
        started = time.monotonic()
        while True:
            try:
                if self.fully_replicated(s):
                    return time.monotonic() - started
            except KafkaException:
                pass
            assert time.monotonic() - started < timeout, f"partitions still under-replicated after {timeout}s"
            time.sleep(0.5)

    def group_coordinator(self, s: Settings, group: str) -> int:
        """The group's coordinator, as DescribeGroups / ConsumerGroupDescribe report it."""
        admin = self.admin(s)  # (held until the answer: a future of a client already gone never completes)
        return admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15).coordinator.id

    def transaction_coordinator(self, s: Settings, transactional_id: str) -> int:
        """The transactional id's coordinator: FindCoordinator (key type 1, transaction),
        asked of a broker over aiokafka's connection (confluent-kafka 2.16 has no admin
        call for it; its librdkafka asks the same request itself)."""
        return asyncio.run(_find_coordinator(self.bootstrap.split(",")[0], transactional_id, 1))

    def describe_transaction(self, transactional_id: str) -> dict[str, str]:
        """Kafka's own `kafka-transactions.sh describe` (KIP-664's DescribeTransactions;
        confluent-kafka has no call for it): CoordinatorId, TransactionState (Ongoing while
        a transaction is open), TopicPartitions, ..."""
        done = subprocess.run(["bash", str(STACK), "kafka-tool", "org.apache.kafka.tools.TransactionsCommand",
                               "--bootstrap-server", self.bootstrap, "describe", "--transactional-id",
                               transactional_id], capture_output=True, text=True, timeout=120, check=False)
        lines = [line.split("\t") for line in done.stdout.splitlines() if "\t" in line]
        assert done.returncode == 0 and len(lines) == 2, f"describe {transactional_id}: {done.stdout}{done.stderr}"
        return {k.strip(): v.strip() for k, v in zip(lines[0], lines[1], strict=False)}

    def healthy(self, s: Settings) -> None:
        """Every node running and thawed, every proxy enabled without toxics, every
        partition fully replicated: how each fault test starts, and leaves the cluster."""
        self.toxiproxy.reset()
        for n in NODES:
            self.node("thaw", n) if n in self.running() else self.node("start", n)
        self.wait_fully_replicated(s)


async def _find_coordinator(server: str, key: str, key_type: int) -> int:
    from aiokafka.conn import create_conn
    from aiokafka.protocol.coordination import FindCoordinatorRequest

    host, port = server.rsplit(":", 1)
    for _ in range(30):
        conn = await create_conn(host, int(port), client_id="slipguard-tests", request_timeout_ms=10_000)
        try:
            response = await conn.send(FindCoordinatorRequest(key, key_type))
        finally:
            conn.close()
        if response.error_code == 0:
            return int(response.coordinator_id)
        await asyncio.sleep(0.5)  # COORDINATOR_NOT_AVAILABLE while its partition's leader moves
    raise AssertionError(f"FindCoordinator({key!r}, {key_type}): error {response.error_code}")
