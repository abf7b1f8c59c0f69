"""Every command is wired to its handler and takes every setting as a flag."""

from __future__ import annotations

import pytest

from streams.cli import build_parser

COMMANDS = {
    ("topics", "create"): "_topics_create", ("lag",): "_lag", ("dlq", "list"): "_dlq_list",
    ("dlq", "replay"): "_dlq_replay", ("join",): "_join", ("recover",): "_recover", ("db", "migrate"): "_migrate",
    ("demo",): "_demo", ("loadgen",): "_loadgen", ("bench",): "_bench", ("bench-failover",): "_bench_failover",
    ("bench-writer",): "_bench_writer", ("acls",): "_acls", ("explain", "o-1"): "_explain", ("reset",): "_reset",
}


@pytest.mark.parametrize("words", list(COMMANDS))
def test_each_command_runs_its_handler_with_settings_as_flags(words: tuple[str, ...]) -> None:
    args = build_parser().parse_args([*words, "--order-timeout=90s"])
    assert args.handler.__name__ == COMMANDS[words]
    assert args.setting_order_timeout == "90s"


def test_a_command_group_without_its_action_is_refused() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dlq"])
