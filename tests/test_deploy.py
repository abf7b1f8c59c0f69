"""deploy/: the alert rules pass promtool, and dashboard and rules only name metrics slipguard exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import streams.ops.metrics  # noqa: F401  (registers every metric)
from streams.ops.exporter import LagCollector

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "slipguard-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "slipguard-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "slipguard-dashboard.json"


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: `make tools` (deploy/local/tools.sh) installs it")
    return tool


def test_alert_rules_are_valid() -> None:
    out = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_fire_on_their_series_and_not_on_quiet_ones() -> None:
    out = subprocess.run([_promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                         cwd=RULE_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def _exported_names() -> set[str]:
    names = set()
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            names.add(sample.name)
        names.add(metric.name)
        names |= {metric.name + suffix for suffix in ("_total", "_bucket", "_sum", "_count")}
    for family in LagCollector(None, []).collect():
        names.add(family.name)
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(slipguard_[a-z0-9_]+)", expr))


def test_dashboard_and_rules_name_only_metrics_that_exist() -> None:
    exported = _exported_names()
    dashboard = json.loads(DASHBOARD.read_text())
    used = {n for p in dashboard["panels"] for t in p["targets"] for n in _metric_names(t["expr"])}
    used |= _metric_names(RULES.read_text())
    assert used, "the dashboard and rules query slipguard metrics"
    assert used <= exported, f"not exported by any worker: {sorted(used - exported)}"


def test_dashboard_covers_what_operators_watch() -> None:
    text = DASHBOARD.read_text()
    for needed in ("slipguard_consumer_lag_messages", "slipguard_consumer_lag_seconds", "slipguard_join_records_total",
                   "slipguard_join_pending_payments", "slipguard_join_recovered_total",
                   "slipguard_join_detection_latency_seconds_bucket", "slipguard_join_anomalies_total",
                   "slipguard_dlq_records_total", "slipguard_writer_rows_total"):
        assert needed in text, needed


def test_the_image_lock_pins_every_dependency_with_hashes_within_pyproject_ranges() -> None:
    """deploy/docker/requirements.lock (pip-compile --generate-hashes of pyproject.toml) is
    what the image installs with --require-hashes: every dependency of pyproject must be
    in it, at a version pyproject allows, with hashes."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = Path(__file__).resolve().parents[1]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    lock = (root / "deploy" / "docker" / "requirements.lock").read_text()
    pinned = {canonicalize_name(m.group(1)): m.group(2)
              for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", lock, re.M)}
    for dep in deps:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not in requirements.lock: re-run pip-compile (docs/deploying.md)"
        assert req.specifier.contains(pinned[name]), f"{req.name}=={pinned[name]} outside {req.specifier}"
    blocks = re.split(r"^(?=[A-Za-z0-9_.-]+==)", lock, flags=re.M)[1:]
    assert blocks and all("--hash=sha256:" in b for b in blocks), "every pin carries its hashes"


def test_the_sbom_lists_every_installed_distribution_and_the_lock_hashes_of_locked_ones(tmp_path) -> None:
    """deploy/docker/sbom.py, run here by this venv's Python as the image build runs it by the
    image's: slipguard is the subject, every other distribution a component."""
    import importlib.metadata as md
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "sbom.json"
    subprocess.run([sys.executable, str(root / "deploy" / "docker" / "sbom.py"), "--lock",
                    str(root / "deploy" / "docker" / "requirements.lock"), "--out", str(out)], check=True)
    bom = json.loads(out.read_text())
    assert bom["metadata"]["component"]["name"] == "slipguard"
    names = {c["name"] for c in bom["components"] if c["purl"].startswith("pkg:pypi/")}
    assert names == {d.metadata["Name"] for d in md.distributions()} - {"slipguard"}
    lock = (root / "deploy" / "docker" / "requirements.lock").read_text()
    as_locked = [c for c in bom["components"] if re.search(rf"^{re.escape(c['name'])}=={re.escape(c['version'])} ",
                                                            lock, re.M | re.I)]
    assert as_locked, "this venv has some of the lock's pins"
    for c in as_locked:
        assert c["properties"] and all(f"sha256:{p['value']}" in lock for p in c["properties"]), c["name"]
