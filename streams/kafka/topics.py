"""`slipguard topics create`: create or verify every topic of the contract."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from streams.kafka import config
from streams.kafka.acls import denied
from streams.kafka.calls import group_refused, topic_refused
from streams.retry import Retry, Stopped
from streams.settings import TOPIC_SETTINGS, Settings

log = logging.getLogger("slipguard.topics")

DAY_MS = 86_400_000


class TopicLayoutError(Exception):
    """Existing topics cannot be joined as they are (for example, unequal partition counts)."""


class AccessDenied(TopicLayoutError):
    """The broker's authorizer refused this principal a topic or group (one line: who,
    which permission, which resource, and `slipguard acls`)."""


# The record size limit of every topic the join writes (Kafka's default), set explicitly
# so that a broker whose default is smaller does not make them smaller.
CHANGELOG_MAX_MESSAGE_BYTES = OUTPUT_MAX_MESSAGE_BYTES = 1_048_588
# What the join's producer may send in one batch (librdkafka's batch.size and
# message.max.bytes, config.producer): each topic it writes must take at least this.
# librdkafka does not split a batch the broker refuses as too large (the Java client
# does), so a smaller topic would stall the join on its first full batch.
PRODUCER_BATCH_BYTES = 1_000_000


# The changelog churns: nearly every payment pending across a commit leaves a record and a
# tombstone, and a restore reads everything the log cleaner has not removed yet. Only a
# closed segment is cleaned, and a tombstone outlives the cleaning by delete.retention.ms
# (a day by default). So segments close every 10 minutes and tombstones go 10 minutes
# after: a restore reads about 20 minutes of churn at most, not hours of it (in a soak at
# 5,000 events/s, a worker restoring four partitions with 10,000 entries of state took 1 s
# in the first minutes, 13-15 s after 25 minutes). A restore reads its partitions in
# seconds, well within the 10 minutes a reader from offset 0 has to see every tombstone.
CHANGELOG_SEGMENT_MS = 600_000


def changelog_config(settings: Settings) -> dict[str, str]:
    conf = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": str(CHANGELOG_SEGMENT_MS),
            "delete.retention.ms": str(CHANGELOG_SEGMENT_MS), "max.message.bytes": str(CHANGELOG_MAX_MESSAGE_BYTES)}
    if settings.min_insync_replicas is not None:
        conf["min.insync.replicas"] = str(settings.min_insync_replicas)
    return conf


# Topics that other teams' services read are stored gzip-compressed (the broker
# recompresses what the join's lz4 producer sends): every mainstream client reads gzip
# with its defaults, and kafkajs, Node's most used client, crashes on lz4
# ("KafkaJSNotImplemented: LZ4 compression not implemented"). Their volume is small.
SUBSCRIBER_COMPRESSION = "gzip"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    co_partitioned: bool  # must have the same partition count as payments
    for_subscribers: bool = False  # read by other teams' services: a compression all clients read


def topic_specs(settings: Settings) -> list[TopicSpec]:
    n = settings.partitions
    keep = {"retention.ms": str(7 * DAY_MS)}
    subscribed = {"retention.ms": str(30 * DAY_MS), "compression.type": SUBSCRIBER_COMPRESSION,
                  "max.message.bytes": str(OUTPUT_MAX_MESSAGE_BYTES)}
    return [
        TopicSpec(settings.payments_topic, n, keep, True),
        TopicSpec(settings.orders_topic, n, keep, True),
        # The join's state: compacted, keyed by entry, co-partitioned with its inputs.
        TopicSpec(settings.changelog_topic, n, changelog_config(settings), True),
        TopicSpec(settings.recovery_topic, n, subscribed, False, True),
        TopicSpec(settings.late_topic, n, subscribed, False, True),
        TopicSpec(settings.anomalies_topic, n, subscribed, False, True),
        TopicSpec(settings.dlq_topic, 1, subscribed, False, True),
    ]


def existing_partitions(admin: AdminClient, timeout: float = 10.0) -> dict[str, int]:
    meta = admin.list_topics(timeout=timeout)
    return {name: len(t.partitions) for name, t in meta.topics.items() if t.error is None}


def check_co_partitioned(client: Any, settings: Settings) -> None:
    """Payments, orders and the changelog must have equal partition counts: the join pairs
    partition p of each. `client`: any confluent-kafka client (its list_topics)."""
    topics = [settings.payments_topic, settings.orders_topic, settings.changelog_topic]
    meta = client.list_topics(timeout=10)
    counts = {t: len(meta.topics[t].partitions) if t in meta.topics and meta.topics[t].error is None else 0
              for t in topics}
    if len(set(counts.values())) != 1:
        found = ", ".join(f"{t}={n}" for t, n in counts.items())
        raise TopicLayoutError(f"payments, orders and the changelog must have the same partition count to be "
                               f"joined; found {found}. Stop every join worker, make the counts equal "
                               "(see docs/deploying.md: scaling rules), then start them again")


def create_topics(settings: Settings, *, timeout: float = 30.0) -> list[str]:
    """Create what is missing, verify what exists. Returns one line per topic.

    Raises TopicLayoutError when payments, orders and the changelog would not be
    co-partitioned: the join pairs partition p of each, so their counts must be equal.
    """
    admin = AdminClient(config.admin(settings))
    specs = topic_specs(settings)
    have = existing_partitions(admin, timeout)
    late = _listed_late(admin, [s.name for s in specs if s.name not in have], timeout)
    if late:  # decide the layout on what exists, not on what the listing shows yet
        wait_for_topics(settings, late, timeout=timeout)
        have = existing_partitions(admin, timeout)

    co = {s.name: have[s.name] for s in specs if s.co_partitioned and s.name in have}
    if len(set(co.values())) > 1:
        found = ", ".join(f"{name}={count}" for name, count in co.items())
        raise TopicLayoutError(
            f"payments and orders must have the same partition count to be joined; found {found}. "
            "Add partitions to the smaller (kafka-topics --alter --partitions) or recreate it."
        )
    target = next(iter(co.values()), settings.partitions)

    missing = [s for s in specs if s.name not in have]
    for spec in missing:  # absent from the listing: missing, or hidden from this principal?
        if topic_refused(admin, spec.name, timeout):
            raise AccessDenied(denied(settings, "admin", "TOPIC", spec.name))
    lines = []
    if missing:
        new = [
            NewTopic(s.name, num_partitions=target if s.co_partitioned else s.partitions,
                     replication_factor=settings.replication_factor, config=s.config)
            for s in missing
        ]
        for name, future in admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout).items():
            try:
                future.result()
                lines.append(f"created  {name}")
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                    raise AccessDenied(denied(settings, "admin", "TOPIC", name)) from None
                if exc.args[0].code() != exc.args[0].TOPIC_ALREADY_EXISTS:
                    raise
                lines.append(f"exists   {name}")
    existing = [s for s in specs if s.name in have]
    for s in existing:
        lines.append(f"verified {s.name} ({have[s.name]} partitions)")
    lines += _set_subscriber_compression(admin, [s.name for s in existing if s.for_subscribers], timeout)
    lines += _skew_admitted(admin, settings, timeout)
    small = too_small_for_the_join(admin, settings, timeout)
    if small:
        raise TopicLayoutError(small)
    return lines


def join_outputs(settings: Settings) -> list[str]:
    return [settings.recovery_topic, settings.late_topic, settings.anomalies_topic, settings.dlq_topic,
            settings.changelog_topic]


def too_small_for_the_join(admin: AdminClient, settings: Settings, timeout: float) -> str | None:
    """One line naming the topics the join writes whose max.message.bytes is below what
    its producer sends in a batch (PRODUCER_BATCH_BYTES), or None. Topics this principal
    may not describe (no DescribeConfigs ACL) or that do not exist yet are not judged."""
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in join_outputs(settings)]
    small = []
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            entry = future.result().get("max.message.bytes")
        except KafkaException:
            continue
        if entry is not None and entry.value is not None and int(entry.value) < PRODUCER_BATCH_BYTES:
            small.append(f"{resource.name}={entry.value}")
    if not small:
        return None
    return (f"topics the join writes take records too small for it: max.message.bytes {', '.join(small)}; it needs "
            f"at least {PRODUCER_BATCH_BYTES:,} (one batch of its producer). Raise it (kafka-configs --alter "
            f"--entity-type topics --entity-name TOPIC --add-config max.message.bytes={OUTPUT_MAX_MESSAGE_BYTES})")


def _skew_admitted(admin: AdminClient, settings: Settings, timeout: float) -> list[str]:
    """A warning for payments or orders if the broker takes records stamped more than GRACE
    ahead of their append time: in a backlog one record from a clock that fast moves the
    partition's progress past payments whose orders are still unread (docs/concepts/time-safety.md: a fast clock
    in a backlog). Said, not changed: the topics belong to the services that write them.
    Nothing is said when this principal may not read the topics' configs."""
    inputs = [settings.payments_topic, settings.orders_topic]
    wait_for_topics(settings, inputs, timeout=min(timeout, 10.0))  # just created: in the broker's metadata first
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in inputs]
    lines = []
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            entries = future.result()
        except KafkaException:
            continue
        kind = entries.get("message.timestamp.type")
        if kind is not None and kind.value == "LogAppendTime":
            continue  # the broker stamps them
        # Kafka 3.6+ (KIP-937); before it, one bound for both directions.
        ahead = entries.get("message.timestamp.after.max.ms") or entries.get("message.timestamp.difference.max.ms")
        if ahead is None or ahead.value is None or int(ahead.value) <= settings.grace:
            continue
        bound = int(ahead.value)
        how = "any time" if bound >= 2**62 else f"up to {_duration(bound)}"  # Long.MAX_VALUE: the old default
        lines.append(f"warning  {resource.name}: takes records stamped {how} ahead of "
                     f"their append time ({ahead.name}); in a backlog two in a row from a clock that fast can time out "
                     f"payments whose orders are still unread: set it well below GRACE ({_duration(settings.grace)}) "
                     "(docs/concepts/time-safety.md)")
    return lines


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1_000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms} ms"


def _listed_late(admin: AdminClient, names: list[str], timeout: float) -> list[str]:
    """Of the topics a metadata listing lacks, those that exist all the same. A topic just
    created (by another tool, a moment ago) reaches a broker's metadata a little later
    than the controller has it; deciding the layout without it would create orders with
    another partition count than payments (seen on a broker just started). A validate-only
    creation asks the controller, which answers TOPIC_ALREADY_EXISTS for those."""
    if not names:
        return []
    asked = admin.create_topics([NewTopic(n, 1) for n in names], validate_only=True, request_timeout=timeout)
    late = []
    for name, future in asked.items():
        try:
            future.result()
        except KafkaException as exc:  # anything else (a refusal, a policy) the creation itself reports
            if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                late.append(name)
    return late


def _set_subscriber_compression(admin: AdminClient, topics: list[str], timeout: float) -> list[str]:
    """Topics created before SUBSCRIBER_COMPRESSION was set get it (idempotent)."""
    if not topics:
        return []
    entry = ConfigEntry("compression.type", SUBSCRIBER_COMPRESSION,
                        incremental_operation=AlterConfigOpType.SET)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t, incremental_configs=[entry]) for t in topics]
    lines = []
    for resource, future in admin.incremental_alter_configs(resources, request_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            why = exc.args[0].str()
            if exc.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                why = "this principal needs AlterConfigs on it, once, for topics made before slipguard set it"
            lines.append(f"warning  {resource.name}: cannot set compression.type={SUBSCRIBER_COMPRESSION} "
                         f"({why}); clients without lz4 support (kafkajs) cannot read it")
    return lines


def wait_for_topics(settings: Settings, names: list[str], *, timeout: float = 60.0,
                    stopping: Callable[[], bool] = lambda: False) -> list[str]:
    """Wait until the broker's metadata lists every topic in `names`; return those still missing.

    A topic created a moment ago (or a broker just started) may not be in the metadata
    yet. A consumer that subscribes then may join its group with nothing assigned; faust's
    consumer (aiokafka) then sees the topic only at its next metadata refresh.
    """
    admin = AdminClient(config.admin(settings))

    def all_there() -> None:
        missing = [n for n in names if n not in existing_partitions(admin, timeout=1)]
        if missing:
            raise _Missing(missing)

    try:
        Retry(f"find topics {', '.join(names)}", deadline=timeout, first_delay=0.5, max_delay=0.5,
              retriable=lambda e: isinstance(e, (_Missing, KafkaException)), stopping=stopping,
              quiet_for=timeout + 1).call(all_there)
    except (_Missing, KafkaException, Stopped) as exc:
        last = exc.__cause__ if isinstance(exc, Stopped) else exc
        # (a KafkaException: the broker does not answer yet)
        return last.missing if isinstance(last, _Missing) else list(names)
    return []


def check_access(admin: AdminClient, settings: Settings, role: str, topics: list[str], *,
                 stopping: Callable[[], bool] = lambda: False) -> None:
    """Ask for each topic's metadata on its own: a topic this principal may not use answers
    TOPIC_AUTHORIZATION_FAILED (whether or not it exists), which becomes one line naming the
    permission, the topic and the role, at start rather than at the first record."""
    for topic in topics:
        if stopping():
            return
        try:
            refused = topic_refused(admin, topic)
        except KafkaException:
            return  # the broker is away: the waits that follow say so
        if refused:
            raise AccessDenied(denied(settings, role, "TOPIC", topic))


def check_readable(settings: Settings, role: str, topic: str) -> None:
    """Fetch once from partition 0 of `topic`: Read is checked on every fetch, even of an
    empty partition (which answers end-of-partition at once), and the metadata checked
    above cannot tell Read from Write. The join's restore must not mistake a changelog
    it may not read for an empty one."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer(config.consumer(settings, settings.join_group, **{
        "enable.partition.eof": True, "enable.auto.commit": False, "fetch.wait.max.ms": 50}))
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for m in c.consume(1, timeout=0.5):
                err = m.error()
                if err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                    raise AccessDenied(denied(settings, role, "TOPIC", topic))
                return  # a record or the partition's end: readable
    finally:
        c.close()


def check_group(settings: Settings, role: str, group: str, topic: str) -> None:
    """Read the group's committed offset of one partition (OffsetFetch: Describe on the
    group, implied by Read): a group this principal may not use answers
    GROUP_AUTHORIZATION_FAILED here, at once, where a group join would retry it quietly
    (aiokafka does, forever)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(config.consumer(settings, group, **{"enable.auto.commit": False}))
    try:
        c.committed([TopicPartition(topic, 0)], timeout=5)
    except KafkaException as exc:
        if group_refused(c, exc.args[0]):
            raise AccessDenied(denied(settings, role, "GROUP", group)) from None
        # anything else (a coordinator still loading): the group join that follows waits for it
    finally:
        c.close()


WRITE_CHECK_KEY = b"slipguard:write-check"  # a changelog key no state store uses (p:, o:, r:, m:)


def check_writable(settings: Settings, role: str, topic: str) -> None:
    """Write a tombstone under a key no state uses to partition 0 of the changelog (a
    restore skips tombstones; compaction removes it): Write is checked on every produce,
    and a transaction refused later fails with a state error that names no topic."""
    from confluent_kafka import Message, Producer

    failed: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failed.append(err)

    p = Producer(config.producer(settings, on_delivery=delivered))
    p.produce(topic, None, WRITE_CHECK_KEY, partition=0)
    left = p.flush(10)
    if failed and failed[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        raise AccessDenied(denied(settings, role, "TOPIC", topic))
    if failed or left:  # not a refusal: the join's own writes retry, and say so if it lasts
        log.warning("could not check Write on %s: %s", topic, failed[0].str() if failed else "no answer in 10 s")


def not_found(settings: Settings, missing: list[str], existing: Iterable[str]) -> str:
    """One line for a command whose topics are not there: which, where, and which of the
    cluster's topics look like slipguard's under other names (one of its topic names after
    a prefix, as the demo's `demo.<run>.payments`), so that the user learns where the
    records are instead of watching the command retry."""
    defaults = {str(Settings.model_fields[f"{t}_topic"].default) for t in TOPIC_SETTINGS}
    prefixes: dict[str, int] = {}
    for topic in existing:
        for name in defaults:
            prefix = topic.removesuffix(name)
            if prefix != topic and prefix and prefix[-1] in ".-_":
                prefixes[prefix] = prefixes.get(prefix, 0) + 1
    where = f"{', '.join(missing)} not found on {settings.bootstrap_servers}"
    if not prefixes:
        return f"topic(s) {where}, and no topic there looks like slipguard's: `slipguard topics create` makes them"
    shown = sorted(prefixes, reverse=True)[:3]
    more = f" and {len(prefixes) - 3} more" if len(prefixes) > 3 else ""
    named = ", ".join(f"{p}* ({prefixes[p]})" for p in shown)
    demo = next((p for p in shown if p.startswith("demo.")), None)
    hint = (f"; for the demo's: --env-file .stack/demo/{demo.removeprefix('demo.').strip('.')}.env" if demo
            else "; give their names as flags, SLIPGUARD_*_TOPIC or --env-file")
    return f"topic(s) {where}; topics like slipguard's there: {named}{more}{hint}"


class _Missing(Exception):
    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"missing: {', '.join(missing)}")
        self.missing = missing


def ensure_join_topics(settings: Settings, *, timeout: float = 30.0,
                       stopping: Callable[[], bool] = lambda: False) -> str | None:
    """What the join does at start, as Kafka Streams does with its internal topics: the
    inputs must exist and be co-partitioned; the changelog is created when missing
    (compacted, as many partitions as the inputs) and verified when present. Returns a
    line saying which; raises TopicLayoutError with one line that names the topic and
    what to do. None if a stop was requested meanwhile."""
    admin = AdminClient(config.admin(settings))
    inputs = [settings.payments_topic, settings.orders_topic]
    check_access(admin, settings, "join", [*inputs, settings.changelog_topic, settings.recovery_topic,
                                           settings.late_topic, settings.anomalies_topic, settings.dlq_topic],
                 stopping=stopping)
    # Waits while the broker does not answer yet, and a moment for topics just created.
    wait_for_topics(settings, inputs, timeout=timeout, stopping=stopping)
    if stopping():
        return None
    try:
        have = existing_partitions(admin, 5)
    except KafkaException as exc:
        raise TopicLayoutError(f"cannot read topic metadata from {settings.bootstrap_servers}: {exc.args[0]}; "
                               "is the broker reachable?") from None
    missing = [t for t in inputs if t not in have]
    if missing:
        raise TopicLayoutError(f"input {not_found(settings, missing, have)} (or not readable with this "
                               "principal's ACLs)")
    counts = {t: have[t] for t in inputs}
    changelog = settings.changelog_topic
    if changelog in have:
        counts[changelog] = have[changelog]
    if len(set(counts.values())) > 1:
        found = ", ".join(f"{name}={count}" for name, count in counts.items())
        raise TopicLayoutError(f"payments, orders and the changelog must have the same partition count to be "
                               f"joined; found {found}. Stop every join worker and make them equal")
    small = too_small_for_the_join(admin, settings, timeout)
    if small:
        raise TopicLayoutError(small)
    if changelog in have:
        check_readable(settings, "join", changelog)
        check_writable(settings, "join", changelog)
        _verify_compacted(admin, changelog, timeout)
        return f"changelog {changelog} verified ({have[changelog]} partitions, compacted)"
    spec = NewTopic(changelog, num_partitions=counts[settings.payments_topic],
                    replication_factor=settings.replication_factor, config=changelog_config(settings))
    try:
        admin.create_topics([spec], operation_timeout=timeout, request_timeout=timeout)[changelog].result()
    except KafkaException as exc:
        err = exc.args[0]
        if err.code() != err.TOPIC_ALREADY_EXISTS:  # another worker created it meanwhile
            raise TopicLayoutError(f"cannot create the changelog topic {changelog}: {err.str()}; create it "
                                   "with `slipguard topics create` as a principal allowed to") from None
    return f"changelog {changelog} created ({counts[settings.payments_topic]} partitions, compacted)"


def _verify_compacted(admin: AdminClient, topic: str, timeout: float) -> None:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    try:
        entries = admin.describe_configs([resource], request_timeout=timeout)[resource].result()
    except KafkaException:
        return  # not allowed to describe (DescribeConfigs ACL): the partition check stands alone
    policy = entries["cleanup.policy"].value if "cleanup.policy" in entries else ""
    if "compact" not in (policy or ""):
        raise TopicLayoutError(f"the changelog topic {topic} has cleanup.policy={policy}; it must be compacted "
                               f"(kafka-configs --alter --entity-type topics --entity-name {topic} "
                               "--add-config cleanup.policy=compact)")
