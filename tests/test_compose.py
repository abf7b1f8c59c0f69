"""deploy/compose/compose.yaml: valid for Docker Compose (`docker-compose config`, Debian's
package, installed by deploy/local/tools.sh) and in agreement with the code: commands,
settings, metrics ports and what Prometheus scrapes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from streams.cli import build_parser
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"


def _config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["docker-compose", "-f", str(path), "config"], capture_output=True, text=True, timeout=60)


def test_compose_file_is_valid_and_agrees_with_the_code() -> None:
    done = _config(COMPOSE)
    assert done.returncode == 0, done.stderr
    as_json = subprocess.run(["node", str(ROOT / "tests" / "js" / "validate_manifests.mjs"), "--to-json"],
                             input=done.stdout, capture_output=True, text=True, cwd=ROOT / "tests" / "js", timeout=60)
    services = json.loads(as_json.stdout)[0]["services"]
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


def test_a_broken_compose_file_is_refused(tmp_path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("condition: service_healthy", "condition: service_happy", 1))
    assert _config(broken).returncode != 0
