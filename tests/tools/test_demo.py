"""`slipguard demo`'s paths: its workers' logs under the checkout's .stack/demo, and the
line said when a worker exits names the file its output went to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streams.settings import Settings
from streams.tools import demo

CHECKOUT = Path(__file__).resolve().parents[2]


def test_the_workers_logs_go_under_the_checkout_s_stack_directory() -> None:
    assert (CHECKOUT / "pyproject.toml").is_file()
    assert demo.ROOT == CHECKOUT
    assert demo.log_file("120000", "join") == CHECKOUT / ".stack" / "demo" / "120000-join.log"


def test_a_worker_that_exited_is_reported_with_its_code_and_its_log_file() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    gone.wait(30)
    said = demo._exited({"join": gone}, "120000")
    assert said == f"the join worker exited with 3; see {CHECKOUT / '.stack' / 'demo' / '120000-join.log'}"


def test_a_running_worker_is_not_reported() -> None:
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert demo._exited({"recover": running}, "120000") is None
    finally:
        running.kill()
        running.wait(30)


def test_the_workers_import_this_checkout_s_streams() -> None:
    first = demo._env(Settings(), 9400)["PYTHONPATH"].split(os.pathsep)[0]
    assert Path(first) == CHECKOUT
    assert (Path(first) / "streams" / "__init__.py").is_file()
