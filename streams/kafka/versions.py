"""Whether the brokers offer the KIP-848 consumer group protocol, from their ApiVersions.

librdkafka needs ConsumerGroupHeartbeat v1 (Kafka 4.0+) for `group.protocol=consumer`.
Against an older broker it does not fail: it marks the coordinator dead and asks again,
forever, without an error (rd_kafka_ConsumerGroupHeartbeatRequest, librdkafka 2.16).
Seen here on Kafka 3.9.1: no error, no assignment, for as long as it ran. So `auto` asks
a broker first. librdkafka does not expose the versions it learnt, so this asks through
aiokafka's connection (a dependency already, through the writer), which speaks TLS and
SASL with the same settings as every other client. Every broker is asked: during a
rolling upgrade from Kafka 3 any of them may be the group's coordinator. (A Kafka 4.x broker that leaves
`consumer` out of `group.coordinator.rebalance.protocols` still lists the API and refuses
it at the first heartbeat, a fatal error the worker handles too.)
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from streams.settings import Settings

log = logging.getLogger("slipguard.kafka")

CONSUMER_GROUP_HEARTBEAT = 68  # the API key; version 1 is Kafka 4.0's, the one librdkafka speaks


def ssl_context(s: Settings) -> ssl.SSLContext | None:
    """The TLS context for the Python Kafka clients (faust, aiokafka), from the settings."""
    if not s.kafka_security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(cafile=s.kafka_ssl_ca_location)
    if s.kafka_ssl_certificate_location:
        password = s.kafka_ssl_key_password.get_secret_value() if s.kafka_ssl_key_password else None
        context.load_cert_chain(s.kafka_ssl_certificate_location, s.kafka_ssl_key_location, password)
    return context


async def _max_version(s: Settings, host: str, port: int, api_key: int, timeout: float) -> int:
    from aiokafka.conn import create_conn
    from aiokafka.protocol.admin import ApiVersionRequest

    sasl = s.kafka_security_protocol.startswith("SASL")
    conn = await create_conn(
        host, port, client_id="slipguard", request_timeout_ms=int(timeout * 1000), ssl_context=ssl_context(s),
        security_protocol=s.kafka_security_protocol, sasl_mechanism=s.kafka_sasl_mechanism if sasl else None,
        sasl_plain_username=s.kafka_sasl_username if sasl else None,
        sasl_plain_password=s.kafka_sasl_password.get_secret_value() if sasl and s.kafka_sasl_password else None)
    try:
        response = await conn.send(ApiVersionRequest())
        return max((hi for key, _lo, hi in response.api_versions if key == api_key), default=-1)
    finally:
        conn.close()


def offers_kip848(s: Settings, *, timeout: float = 10.0) -> bool | None:
    """True if every broker of the cluster that answers lists ConsumerGroupHeartbeat v1
    or later, False if one answers without it (a rolling upgrade from Kafka 3 not done
    yet: any broker may be the group's coordinator), None if none answered (then the
    consumer protocol is tried, and a refusal at the first heartbeat still falls back)."""
    answers = [_offers(s, server, timeout) for server in _brokers(s, timeout)]
    known = [a for a in answers if a is not None]
    return all(known) if known else None


def _brokers(s: Settings, timeout: float) -> list[str]:
    """host:port of every broker in the metadata; the bootstrap servers if it cannot be read."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from streams.kafka import config

    try:
        brokers = AdminClient(config.admin(s)).list_topics(timeout=timeout).brokers.values()
        found = sorted(f"{b.host}:{b.port}" for b in brokers)
    except KafkaException:
        found = []
    return found or [x.strip() for x in s.bootstrap_servers.split(",") if x.strip()]


def _offers(s: Settings, server: str, timeout: float) -> bool | None:
    host, _, port = server.rpartition(":")
    try:
        version = asyncio.run(asyncio.wait_for(
            _max_version(s, host.strip("[]"), int(port), CONSUMER_GROUP_HEARTBEAT, timeout), timeout))
    except Exception as exc:  # noqa: BLE001 (this broker cannot tell)
        log.debug("ApiVersions from %s: %r", server, exc)
        return None
    return version >= 1
