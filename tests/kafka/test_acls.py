"""The ACLs per role (streams/kafka/acls.py): least privilege, and the security page of the
docs shows what `slipguard acls` prints (one source)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from unittest import mock

import pytest

from streams.kafka import acls
from streams.settings import Settings

SECURITY_PAGE = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()


def _defaults() -> Settings:
    """The defaults, whatever SLIPGUARD_* variables this shell has."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLIPGUARD_")}
    with mock.patch.dict(os.environ, clean, clear=True):
        return Settings()


def test_the_docs_list_exactly_what_slipguard_acls_prints() -> None:
    s = _defaults()
    commands = []
    for role in acls.ROLES:
        commands += [f"# {role}: User:slipguard-{role}", *acls.kafka_acls_commands(s, role, f"User:slipguard-{role}")]
    block = "```sh\n" + "\n".join(commands) + "\n```"
    assert block in SECURITY_PAGE
    assert "```yaml\n" + acls.strimzi_user(s, "join") + "\n```" in SECURITY_PAGE


def test_each_role_gets_only_what_it_uses() -> None:
    s = _defaults()
    by_role = {role: {(g.resource, g.name, g.operation) for g in acls.grants(s, role)} for role in acls.ROLES}
    # Only the join reads its inputs and writes outputs; nothing but the admin creates topics.
    assert {("TOPIC", s.payments_topic, "READ"), ("TOPIC", s.changelog_topic, "WRITE"),
            ("TRANSACTIONAL_ID", f"{s.join_group}-", "WRITE")} <= by_role["join"]
    assert not any(op == "CREATE" for role in ("join", "writer", "lag") for _, _, op in by_role[role])
    assert not any(op == "WRITE" for _, _, op in by_role["lag"]), "the exporter only reads"
    assert {name for kind, name, _ in by_role["writer"] if kind == "TOPIC"} == {s.recovery_topic, s.late_topic,
                                                                                 s.dlq_topic}
    # Describe is implied by Read and Write: never granted beside them.
    for role in acls.ROLES:
        for kind, name, op in by_role[role]:
            if op == "DESCRIBE":
                assert not {(kind, name, "READ"), (kind, name, "WRITE")} & by_role[role], (role, name)


def test_a_refusal_names_who_what_and_where() -> None:
    s = _defaults().derive(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                           kafka_sasl_username="svc-join", kafka_sasl_password="x")
    line = acls.denied(s, "join", "TRANSACTIONAL_ID", f"{s.join_group}-host-1-abc")
    assert re.fullmatch(r"Kafka denied principal User:svc-join Write on transactional id slipguard-join-\* "
                        r"\(prefixed\); the join role needs it: `slipguard acls --role join` prints the ACLs to grant",
                        line), line
    assert "Read on topic payments (or the topic does not exist)" in acls.denied(s, "join", "TOPIC", "payments")


def test_strimzi_users_are_v1_for_strimzi_1_and_v1beta2_on_request() -> None:
    """Strimzi 1.x serves KafkaUser only as kafka.strimzi.io/v1; 0.4x-0.51 clusters need v1beta2.
    The two differ in apiVersion only (the fields used are in both)."""
    s = _defaults()
    v1 = acls.strimzi_user(s, "join")
    assert v1.startswith("apiVersion: kafka.strimzi.io/v1\n")
    assert acls.strimzi_user(s, "join", api_version="v1beta2") == v1.replace("/v1\n", "/v1beta2\n", 1)
    with pytest.raises(ValueError, match=r"v1beta1.*expected one of v1, v1beta2"):
        acls.strimzi_user(s, "join", api_version="v1beta1")


def test_slipguard_acls_prints_the_strimzi_version_asked_for(capsys) -> None:
    from streams.cli import main

    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLIPGUARD_")}
    with mock.patch.dict(os.environ, clean, clear=True):
        assert main(["acls", "--role", "lag", "--format", "strimzi"]) == 0
        assert capsys.readouterr().out.startswith("apiVersion: kafka.strimzi.io/v1\n")
        assert main(["acls", "--role", "lag", "--format", "strimzi", "--strimzi-api-version", "v1beta2"]) == 0
        assert capsys.readouterr().out.startswith("apiVersion: kafka.strimzi.io/v1beta2\n")
