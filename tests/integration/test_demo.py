"""The quick start's main job (`make demo` runs `slipguard demo`): end to end on the local
stack, its summary as JSON, every figure as produced; the running account on stderr."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.integration.workers import ROOT, env_for


def test_the_demo_matches_every_figure_and_prints_json_when_asked(base_settings) -> None:
    done = subprocess.run([sys.executable, "-m", "streams", "demo", "--seconds", "8", "--rate", "600", "--json"],
                          env=env_for(base_settings), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["all_match"] and {f["figure"] for f in summary["figures"]} >= {"matched", "rows written: inserted"}
    assert "producing" in done.stderr and "worker stopped (exit 0)" in done.stderr
