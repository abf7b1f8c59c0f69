"""The Kafka permissions each part of slipguard needs: the one source for `slipguard acls`,
the docs' commands (docs/security.md), the Strimzi `KafkaUser` entries and the secured-broker tests.

Least privilege, per role, from the settings' own names (topics, groups, the join's
transactional-id prefix):

* join: read payments and orders; read and write its changelog; write the four output
  topics; its group; transactional ids `<join group>-*` (exactly-once). No cluster
  `IdempotentWrite`: since Kafka 3.0 an idempotent or transactional producer needs only
  `Write` on a topic (KIP-679). (Grant it `Create` on the changelog as well to let it
  create the changelog itself; `slipguard topics create` creates it.)
* writer: read the recovery and late topics; its group; write the DLQ.
* lag (the exporter, `slipguard lag --serve`): describe both groups (committed offsets)
  and the topics they read; read those topics (the next record's time, for lag in seconds).
* admin (`slipguard topics create`): create and describe the topics. (`AlterConfigs` too,
  once, for subscriber topics made before slipguard set their compression to gzip.)
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.settings import Settings

ROLES = ("join", "writer", "lag", "admin")
# Strimzi's API versions of KafkaUser and KafkaTopic: Strimzi 1.x serves only v1; 0.4x to
# 0.51 serve v1beta2 (0.51 serves both). The fields slipguard uses are the same in both.
STRIMZI_API_VERSIONS = ("v1", "v1beta2")
STRIMZI_API_VERSION = "v1"


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW entry: `operation` on a resource (TOPIC, GROUP, TRANSACTIONAL_ID), named
    literally or by prefix."""

    resource: str
    name: str
    operation: str
    prefixed: bool = False

    def describe(self) -> str:
        kind = {"TOPIC": "topic", "GROUP": "group", "TRANSACTIONAL_ID": "transactional id"}[self.resource]
        star = "*" if self.prefixed else ""
        return f"{self.operation} on {kind} {self.name}{star}"


def grants(s: Settings, role: str) -> list[Grant]:
    """The ACLs `role` needs, and no more. (Kafka's Read and Write imply Describe, and
    AlterConfigs implies DescribeConfigs, so those are not listed again.)"""
    def topic(name: str, *ops: str) -> list[Grant]:
        return [Grant("TOPIC", name, op) for op in ops]

    if role == "join":
        out = topic(s.payments_topic, "READ") + topic(s.orders_topic, "READ")
        out += topic(s.changelog_topic, "READ", "WRITE")
        for name in (s.recovery_topic, s.late_topic, s.anomalies_topic, s.dlq_topic):
            out += topic(name, "WRITE")
        return [*out, Grant("GROUP", s.join_group, "READ"),
                Grant("TRANSACTIONAL_ID", f"{s.join_group}-", "WRITE", prefixed=True)]
    if role == "writer":
        out = topic(s.recovery_topic, "READ") + topic(s.late_topic, "READ") + topic(s.dlq_topic, "WRITE")
        return [*out, Grant("GROUP", s.recover_group, "READ")]
    if role == "lag":
        out = []
        for name in (s.payments_topic, s.orders_topic, s.recovery_topic, s.late_topic):
            out += topic(name, "READ")
        return [*out, Grant("GROUP", s.join_group, "DESCRIBE"), Grant("GROUP", s.recover_group, "DESCRIBE")]
    if role == "admin":
        out = []
        for name in (s.payments_topic, s.orders_topic, s.recovery_topic, s.late_topic, s.anomalies_topic,
                     s.dlq_topic, s.changelog_topic):
            out += topic(name, "CREATE", "DESCRIBE")
        return out
    raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")


def bindings(s: Settings, role: str, principal: str) -> list:
    """confluent-kafka AclBindings for `grants(s, role)` given to `principal` (User:name)."""
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    return [AclBinding(ResourceType[g.resource], g.name,
                       ResourcePatternType.PREFIXED if g.prefixed else ResourcePatternType.LITERAL,
                       principal, "*", AclOperation[g.operation], AclPermissionType.ALLOW)
            for g in grants(s, role)]


def kafka_acls_commands(s: Settings, role: str, principal: str, bootstrap: str = "$BOOTSTRAP",
                        command_config: str = "admin.properties") -> list[str]:
    """`kafka-acls.sh` commands an operator can paste: one per resource."""
    flag = {"TOPIC": "--topic", "GROUP": "--group", "TRANSACTIONAL_ID": "--transactional-id"}
    by_resource: dict[tuple[str, str, bool], list[str]] = {}
    for g in grants(s, role):
        by_resource.setdefault((g.resource, g.name, g.prefixed), []).append(g.operation)
    lines = []
    for (resource, name, prefixed), ops in by_resource.items():
        operations = " ".join(f"--operation {_camel(op)}" for op in ops)
        pattern = " --resource-pattern-type prefixed" if prefixed else ""
        lines.append(f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config {command_config} --add "
                     f"--allow-principal {principal} {operations} {flag[resource]} {name}{pattern}")
    return lines


def strimzi_acls(s: Settings, role: str) -> list[dict]:
    """The `spec.authorization.acls` entries of a Strimzi KafkaUser (type: simple)."""
    kind = {"TOPIC": "topic", "GROUP": "group", "TRANSACTIONAL_ID": "transactionalId"}
    by_resource: dict[tuple[str, str, bool], list[str]] = {}
    for g in grants(s, role):
        by_resource.setdefault((g.resource, g.name, g.prefixed), []).append(_camel(g.operation))
    return [{"resource": {"type": kind[r], "name": n, "patternType": "prefix" if p else "literal"}, "operations": ops}
            for (r, n, p), ops in by_resource.items()]


def _camel(op: str) -> str:
    return "".join(part.capitalize() for part in op.split("_"))


def denied(s: Settings, role: str, resource: str, name: str) -> str:
    """One line for a refusal by the broker's authorizer: who, what on which resource, and
    how to grant it."""
    who = f"principal User:{s.kafka_sasl_username}" if s.kafka_sasl_username else "this client's principal"
    needed = [g for g in grants(s, role) if g.resource == resource and (g.name == name or (g.prefixed and
                                                                        name.startswith(g.name)))]
    ops = " and ".join(_camel(g.operation) for g in needed) or "access"
    kind = {"TOPIC": "topic", "GROUP": "group", "TRANSACTIONAL_ID": "transactional id"}[resource]
    shown = f"{needed[0].name}* (prefixed)" if needed and needed[0].prefixed else name
    maybe = " (or the topic does not exist)" if resource == "TOPIC" else ""
    return (f"Kafka denied {who} {ops} on {kind} {shown}{maybe}; the {role} role needs it: "
            f"`slipguard acls --role {role}` prints the ACLs to grant")


def strimzi_user(s: Settings, role: str, cluster: str = "my-cluster", api_version: str = STRIMZI_API_VERSION) -> str:
    """A Strimzi KafkaUser (SCRAM-SHA-512, simple authorization) for `role`, as YAML, of
    `api_version` (v1: Strimzi 1.x; v1beta2: Strimzi 0.4x to 0.51)."""
    if api_version not in STRIMZI_API_VERSIONS:
        raise ValueError(f"unknown Strimzi API version {api_version!r}; expected one of "
                         f"{', '.join(STRIMZI_API_VERSIONS)}")
    lines = [f"apiVersion: kafka.strimzi.io/{api_version}", "kind: KafkaUser", "metadata:", f"  name: slipguard-{role}",
             "  labels:", f"    strimzi.io/cluster: {cluster}", "spec:", "  authentication:",
             "    type: scram-sha-512", "  authorization:", "    type: simple", "    acls:"]
    for entry in strimzi_acls(s, role):
        r = entry["resource"]
        lines += [f"      - resource: {{type: {r['type']}, name: {r['name']}, patternType: {r['patternType']}}}",
                  f"        operations: [{', '.join(entry['operations'])}]"]
    return "\n".join(lines)
