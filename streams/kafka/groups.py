"""The join group's timeouts under the KIP-848 consumer protocol.

With the classic protocol a member chooses its session timeout (config.SESSION_TIMEOUT_MS,
10 s) and heartbeat interval. Under KIP-848 the broker owns both: the group's own configs
`consumer.session.timeout.ms` and `consumer.heartbeat.interval.ms`, else the broker's
defaults (45 s and 5 s). The session timeout is how long a crashed worker's partitions
wait for a new owner, and the heartbeat interval how long a member takes to learn that a
partition moved. So the join asks for the same 10 s and 1 s as a group config, unless
the group already has its own (an operator's choice is kept). The broker may refuse:
below its floors (`group.consumer.min.session.timeout.ms`, 45 s by default, and
`group.consumer.min.heartbeat.interval.ms`, 5 s), or no AlterConfigs ACL on the group.
Nothing stops for that: the worker says, in one line, how long a crash will take.
"""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    ResourceType,
)

from streams.kafka import config
from streams.settings import Settings

SESSION = "consumer.session.timeout.ms"
HEARTBEAT = "consumer.heartbeat.interval.ms"


def wanted() -> dict[str, int]:
    return {SESSION: config.SESSION_TIMEOUT_MS, HEARTBEAT: config.HEARTBEAT_INTERVAL_MS}


def tune_group_timeouts(settings: Settings, group: str, *, timeout: float = 10.0) -> tuple[str, float]:
    """Ask for the join's timeouts as the group's configs where the group has none of its
    own; returns one line saying what a crash costs, for the log, and the group's session
    timeout in seconds (45, the broker's default, when unknown). Never raises on a
    refusal: the broker's values then apply."""
    line = _tune(settings, group, timeout)
    return line, group_session_timeout_s(settings, group, timeout=timeout)


def _tune(settings: Settings, group: str, timeout: float) -> str:
    admin = AdminClient(config.admin(settings))
    resource = ConfigResource(ResourceType.GROUP, group)
    want = wanted()
    try:
        entries = admin.describe_configs([resource], request_timeout=timeout)[resource].result()
    except KafkaException as exc:
        return (f"group {group}: cannot read its configs ({exc.args[0].str()}); a crashed worker's partitions move "
                f"after the broker's group.consumer.session.timeout.ms (45 s by default); grant this principal "
                "AlterConfigs on the group to let the join set 10 s (docs/operating/cluster.md)")
    have = {name: entries[name] for name in want if name in entries}
    if any(e.source == ConfigSource.GROUP_CONFIG.value for e in have.values()):
        return (f"group {group}: session timeout {_seconds(have, SESSION)}, heartbeat {_seconds(have, HEARTBEAT)} "
                f"(the group's own configs, kept): a crashed worker's partitions move after the session timeout")
    if all(name in have and have[name].value == str(value) for name, value in want.items()):
        return f"group {group}: session timeout {_seconds(have, SESSION)}, heartbeat {_seconds(have, HEARTBEAT)}"
    try:
        set_group_configs(admin, group, want, timeout)
    except KafkaException as exc:
        return (f"group {group}: the broker refused session timeout {want[SESSION] / 1000:g}s and heartbeat "
                f"{want[HEARTBEAT] / 1000:g}s as group configs ({exc.args[0].str()}), so a crashed worker's "
                f"partitions move after its session timeout, {_seconds(have, SESSION)}; to shorten it, lower the "
                "broker's group.consumer.min.session.timeout.ms and group.consumer.min.heartbeat.interval.ms, or "
                "grant this principal AlterConfigs on the group (docs/operating/cluster.md)")
    return (f"group {group}: session timeout {want[SESSION] / 1000:g}s, heartbeat {want[HEARTBEAT] / 1000:g}s (set "
            f"as group configs): a crashed worker's partitions move after {want[SESSION] / 1000:g}s")


def set_group_configs(admin: AdminClient, group: str, values: dict[str, int], timeout: float = 10.0) -> None:
    """Set the group's configs (IncrementalAlterConfigs); raises KafkaException if refused."""
    entries = [ConfigEntry(name, str(value), incremental_operation=AlterConfigOpType.SET)
               for name, value in values.items()]
    for future in admin.incremental_alter_configs([ConfigResource(ResourceType.GROUP, group,
                                                                  incremental_configs=entries)]).values():
        future.result(timeout)


def group_session_timeout_s(settings: Settings, group: str, *, timeout: float = 10.0) -> float:
    """The group's KIP-848 session timeout in seconds (the broker's default, 45 s, when it
    cannot be read); a classic member's is at most the broker's group.max.session.timeout.ms,
    and slipguard's own 10 s."""
    timeouts = group_timeouts_s(settings, group, timeout=timeout)
    return 45.0 if timeouts is None else max(timeouts[0], config.SESSION_TIMEOUT_MS / 1000)


def group_timeouts_s(settings: Settings, group: str, *, timeout: float = 10.0) -> tuple[float, float] | None:
    """The KIP-848 group's session timeout and heartbeat interval in seconds, as the broker
    applies them (the group's own configs, else the broker's defaults); None when they
    cannot be read."""
    admin = AdminClient(config.admin(settings))
    resource = ConfigResource(ResourceType.GROUP, group)
    try:
        entries = admin.describe_configs([resource], request_timeout=timeout)[resource].result()
        return int(entries[SESSION].value) / 1000, int(entries[HEARTBEAT].value) / 1000
    except (KafkaException, KeyError, TypeError, ValueError):
        return None


def _seconds(entries: dict[str, ConfigEntry], name: str) -> str:
    entry = entries.get(name)
    if entry is None or entry.value is None:
        return "unknown"
    try:
        return f"{int(entry.value) / 1000:g}s"
    except ValueError:
        return "unknown"
