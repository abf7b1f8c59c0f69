"""`slipguard dlq replay`: a bad choice of dead letters is one line (exit 2), before any
broker is asked. The broker given is unreachable, so a check that let one through
would fail the test (after librdkafka's timeout) instead of replaying anything."""

from __future__ import annotations

import io

import pytest

from streams.cli import main

NOWHERE = ["--bootstrap-servers=127.0.0.1:1", "--dlq-topic=no.such.dlq"]


@pytest.fixture(autouse=True)
def no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # as under cron or CI: not a terminal


@pytest.mark.parametrize("offsets", ["x-3", "3-x", "", "-1", "1-", "3-1", "1-2-3", "1,2", " 3", "1.5"])
def test_offsets_other_than_a_or_a_to_b_are_one_line_and_exit_2(capsys, offsets: str) -> None:
    assert main(["dlq", "replay", f"--offsets={offsets}", "--yes", *NOWHERE]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--offsets: expected A" in err and repr(offsets) in err, err


@pytest.mark.parametrize("reason", ["", "   "])
def test_an_empty_reason_which_would_select_every_letter_is_refused(capsys, reason: str) -> None:
    assert main(["dlq", "replay", f"--reason={reason}", "--yes", *NOWHERE]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--reason is empty" in err, err


def test_without_a_terminal_and_without_yes_nothing_is_replayed(capsys) -> None:
    assert main(["dlq", "replay", "--offsets=0-5", *NOWHERE]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "add --yes" in err, err
