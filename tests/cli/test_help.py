"""Each command's --help lists the settings that command uses, grouped (Kafka connection,
security, the join's tuning, ...), and no other: `slipguard lag --help` does not offer
the join's changelog format."""

from __future__ import annotations

import re

import pytest

from streams.cli import build_parser
from streams.settings import SECRET_FIELDS, SETTING_GROUPS, Settings

# Settings only the join worker reads (the demo and the benchmarks pass them to the
# workers they start); a command that only reads or writes topics has no use for them.
JOIN_ONLY = {"max_future", "processing_guarantee", "group_protocol",
             "batch_size", "commit_interval", "changelog_format", "core", "topic_wait", "instance_id",
             "payment_hmac_key", "payment_hmac_previous_key", "minimise_personal_data"}
KAFKA = set(SETTING_GROUPS["Kafka connection"]) | set(SETTING_GROUPS["Kafka security"])


def help_of(capsys, *words: str) -> str:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*words, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def flag(name: str) -> str:
    return "--" + name.replace("_", "-") + ("-file" if name in SECRET_FIELDS else "")


def shown(text: str) -> set[str]:
    """The settings whose flags the help text lists."""
    flags = set(re.findall(r"^  (--[a-z0-9-]+)", text, re.MULTILINE))
    return {name for name in Settings.model_fields if flag(name) in flags}


def sections(text: str) -> list[str]:
    return re.findall(r"^(\S[^\n]*):$", text, re.MULTILINE)


@pytest.mark.parametrize("words", [("lag",), ("loadgen",)])
def test_loadgen_and_lag_offer_no_join_only_setting(capsys, words: tuple[str, ...]) -> None:
    text = help_of(capsys, *words)
    assert not shown(text) & JOIN_ONLY, text
    assert shown(text) >= KAFKA, "every command that speaks to Kafka takes the connection and security settings"
    assert "--changelog-format" not in text and "--commit-interval" not in text


def test_loadgen_shows_the_inputs_and_the_timeout_it_plans_with_and_nothing_more(capsys) -> None:
    assert shown(help_of(capsys, "loadgen")) == KAFKA | {"payments_topic", "orders_topic", "order_timeout",
                                                          "log_level", "log_format"}


def test_lag_shows_the_topics_and_groups_it_reads_and_its_exporter_port(capsys) -> None:
    text = help_of(capsys, "lag")
    assert shown(text) == KAFKA | {"payments_topic", "orders_topic", "recovery_topic", "late_topic", "join_group",
                                   "recover_group", "metrics_port", "metrics_host", "log_level", "log_format"}
    assert sections(text)[-6:] == ["Kafka connection", "Kafka security", "topics", "consumer groups",
                                   "metrics endpoint", "logging"]


def test_the_join_shows_its_rules_and_tuning_grouped_and_no_database(capsys) -> None:
    text = help_of(capsys, "join")
    assert JOIN_ONLY | {"order_timeout", "grace", "late_horizon"} <= shown(text)
    assert "database_url" not in shown(text) and "recover_group" not in shown(text)
    assert {"the join's rules", "the join's tuning", "signatures and personal data"} <= set(sections(text))
    rules = text[text.index("the join's rules:"):text.index("the join's tuning:")]
    assert "--order-timeout" in rules and "(default 60s)" in rules and "--changelog-format" not in rules


def test_db_migrate_shows_only_the_database_and_logging(capsys) -> None:
    assert shown(help_of(capsys, "db", "migrate")) == {"database_url", "log_level", "log_format"}


COMMANDS = [("topics", "create"), ("lag",), ("acls",), ("explain", "o-1"), ("reset",), ("dlq", "list"),
            ("dlq", "replay"), ("join",), ("recover",), ("db", "migrate"), ("demo",), ("loadgen",), ("bench",),
            ("bench-ab",), ("bench-failover",), ("bench-writer",)]


@pytest.mark.parametrize("words", COMMANDS)
def test_each_command_shows_exactly_the_settings_it_takes_in_the_groups_order(capsys, words) -> None:
    text = help_of(capsys, *words)
    uses = build_parser().parse_args(list(words)).uses
    assert shown(text) == set(uses)
    order = [title for title in SETTING_GROUPS if set(SETTING_GROUPS[title]) & uses]
    assert [s for s in sections(text) if s in SETTING_GROUPS] == order
    assert "--env-file" in text


def test_every_setting_is_a_flag_of_some_command() -> None:
    taken = set().union(*(build_parser().parse_args(list(words)).uses for words in COMMANDS))
    assert taken == set(Settings.model_fields)


def test_a_setting_the_command_does_not_use_is_refused(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["lag", "--changelog-format", "2"])
    assert stop.value.code == 2
    assert "unrecognized arguments: --changelog-format" in capsys.readouterr().err
