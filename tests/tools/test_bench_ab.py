"""`slipguard bench-ab` runs an earlier tree's join with this release's settings: the
tree must accept them (it runs on its own defaults for what was not set)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from streams.settings import Settings
from streams.tools.bench_ab import child_env
from tests.integration.workers import release

# The last release before changelog format 4: it refuses SLIPGUARD_CHANGELOG_FORMAT=4.
BEFORE_FORMAT_4 = "832d1be2ac353f829862b5dbf58bbe385d762cc8"


def test_an_earlier_tree_is_given_only_what_differs_from_the_defaults(tmp_path: Path) -> None:
    s = Settings.model_validate({}).derive(bootstrap_servers="127.0.0.1:19092", batch_size=777, core="python")
    env = child_env(s, tmp_path)
    assert env["SLIPGUARD_BOOTSTRAP_SERVERS"] == "127.0.0.1:19092" and env["SLIPGUARD_BATCH_SIZE"] == "777"
    assert "SLIPGUARD_CHANGELOG_FORMAT" not in env and "SLIPGUARD_CORE" not in env
    assert env["PYTHONPATH"] == str(tmp_path)


def test_the_release_before_format_4_loads_the_settings_bench_ab_gives_it(tmp_path: Path) -> None:
    tree = release(BEFORE_FORMAT_4, tmp_path / "old")
    env = child_env(Settings.model_validate({}).derive(batch_size=777), tree)
    code = "from streams.settings import load_settings; s = load_settings(); print(s.batch_size, s.changelog_format)"
    run = subprocess.run([sys.executable, "-c", code],
                         cwd=tree, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["777", "3"]
