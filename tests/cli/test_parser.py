"""Every command is wired to its handler and takes the settings it uses as flags."""

from __future__ import annotations

import pytest

from streams.cli import build_parser
from streams.settings import SECRET_FIELDS

COMMANDS = {
    ("topics", "create"): "_topics_create", ("lag",): "_lag", ("dlq", "list"): "_dlq_list",
    ("dlq", "replay"): "_dlq_replay", ("join",): "_join", ("recover",): "_recover", ("db", "migrate"): "_migrate",
    ("demo",): "_demo", ("loadgen",): "_loadgen", ("bench",): "_bench", ("bench-ab",): "_bench_ab",
    ("bench-failover",): "_bench_failover", ("bench-writer",): "_bench_writer", ("acls",): "_acls",
    ("explain", "o-1"): "_explain", ("reset",): "_reset",
}


@pytest.mark.parametrize("words", list(COMMANDS))
def test_each_command_runs_its_handler_with_its_settings_as_flags(words: tuple[str, ...]) -> None:
    args = build_parser().parse_args([*words, "--log-level=DEBUG"])
    assert args.handler.__name__ == COMMANDS[words]
    assert args.setting_log_level == "DEBUG"
    flags = {k.removeprefix("setting_") for k in vars(args) if k.startswith("setting_")}
    assert flags == args.uses - set(SECRET_FIELDS)


def test_a_command_group_without_its_action_is_refused() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dlq"])


@pytest.mark.parametrize("words", list(COMMANDS))
def test_no_flag_takes_a_secret_value_each_secret_used_takes_a_file(words: tuple[str, ...]) -> None:
    args = vars(build_parser().parse_args(list(words)))
    assert not {f"setting_{name}" for name in SECRET_FIELDS} & set(args), "a secret in /proc/*/cmdline"
    used = [name for name in SECRET_FIELDS if name in args["uses"]]
    assert {f"secret_file_{name}" for name in used} <= set(args)
    assert not {f"secret_file_{name}" for name in SECRET_FIELDS if name not in used} & set(args)


SECRET_FLAGS = ["--database-url", "--payment-hmac-key", "--payment-hmac-previous-key", "--kafka-sasl-password",
                "--kafka-ssl-key-password"]


@pytest.mark.parametrize("flag", SECRET_FLAGS)
@pytest.mark.parametrize("form", ["{flag}=s3cret-value", "{flag} s3cret-value"])
def test_a_secret_given_as_a_value_is_refused_in_one_line_without_echoing_it(capsys, flag: str, form: str) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["recover", *form.format(flag=flag).split(" ")])  # (uses every secret)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag}-file PATH" in err and "s3cret-value" not in err, err


@pytest.mark.parametrize("flag", ["--database-url", "--payment-hmac-key"])
def test_a_secret_a_command_does_not_use_is_refused_without_echoing_it(capsys, flag: str) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["lag", f"{flag}=s3cret-value"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lag does not use" in err and "s3cret-value" not in err, err
