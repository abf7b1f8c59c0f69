"""deploy/compose/compose.yaml: valid under the current Compose Specification, as `docker
compose` v2 reads it (compose-go, through compose-check, which deploy/local/tools.sh builds),
and in agreement with the code: commands, settings, metrics ports and what Prometheus
scrapes. (Debian's docker-compose 1.29 implements an older format, and refuses keys the
specification has since added.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from streams.cli import build_parser
from streams.settings import Settings
from tests.k8s.cluster import CACHE, MISSING

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
COMPOSE_CHECK = CACHE / "bin" / "compose-check"


def _config(path: Path) -> subprocess.CompletedProcess:
    if not os.access(COMPOSE_CHECK, os.X_OK):
        pytest.fail(f"{COMPOSE_CHECK} not found: {MISSING}")
    return subprocess.run([str(COMPOSE_CHECK), str(path)], capture_output=True, text=True, timeout=60)


def test_compose_file_is_valid_and_agrees_with_the_code() -> None:
    done = _config(COMPOSE)
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    fields = {f"SLIPGUARD_{name.upper()}" for name in Settings.model_fields}
    ports = {"join": "9400", "recover": "9401", "lag": "9402"}
    ours = {name: svc for name, svc in services.items() if svc.get("image") == "slipguard:compose"}
    assert {"join-1", "join-2", "writer", "lag-exporter", "topics", "migrate"} <= set(ours)
    for name, svc in ours.items():
        assert build_parser().parse_args(svc["command"]).handler is not None, name
        assert set(svc["environment"]) <= fields, f"{name}: not settings: {set(svc['environment']) - fields}"
        assert svc["read_only"] and svc["user"] == "10001:10001"
        if (svc["command"][0] in ports and svc["command"][0] != "lag") or svc["command"][:2] == ["lag", "--serve"]:
            assert svc["environment"]["SLIPGUARD_METRICS_PORT"] == ports[svc["command"][0]], name
            assert svc["environment"]["SLIPGUARD_METRICS_HOST"] == "0.0.0.0", f"{name}: scraped from another container"
    ids = [ours[name]["environment"]["SLIPGUARD_INSTANCE_ID"] for name in ("join-1", "join-2")]
    assert ids[0] != ids[1]
    scraped = set(re.findall(r'"([a-z0-9-]+:\d+)"', (COMPOSE.parent / "prometheus.yml").read_text()))
    served = {f"{name}:{svc['environment']['SLIPGUARD_METRICS_PORT']}" for name, svc in ours.items()
              if svc["command"][0] in ("join", "recover") or svc["command"][:2] == ["lag", "--serve"]}
    assert scraped == served


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("condition: service_healthy", "condition: service_happy",
     "services.topics.depends_on.kafka.condition value must be one of"),
    ("  read_only: true", "  read_onyl: true", ".read_onyl false schema"),  # (compose-go's words: a key not in it)
    ("topics: {condition: service_completed_successfully}", "topicz: {condition: service_completed_successfully}",
     "depends on undefined service"),
], ids=["bad value", "unknown key", "missing service"])
def test_a_broken_compose_file_is_refused(tmp_path, old: str, new: str, expected: str) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace(old, new, 1))
    done = _config(broken)
    assert done.returncode == 1 and expected in done.stderr, done.stderr
