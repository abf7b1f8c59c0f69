"""The Kubernetes manifests (deploy/k8s): rendered with kustomize, validated against the
Kubernetes API schemas and the KEDA, Prometheus operator and Strimzi CRD schemas
(kubernetes-models from npm, tests/js/validate_manifests.mjs), and checked against the
code they deploy: generated parts current, settings, commands, ports, probes, metric and
group names, users and partitions."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from deploy.k8s import generate
from streams.cli import build_parser
from streams.kafka import acls
from streams.ops.health import PATHS
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
VALIDATE = ROOT / "tests" / "js" / "validate_manifests.mjs"
OVERLAYS = ("dev", "prod")


def _render(overlay: str) -> str:
    done = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _node(args: list[str], text: str) -> subprocess.CompletedProcess:
    assert (ROOT / "tests" / "js" / "node_modules" / "kubernetes-models").exists(), "run deploy/local/tools.sh"
    return subprocess.run(["node", str(VALIDATE), *args], input=text, capture_output=True, text=True, timeout=120,
                          cwd=ROOT / "tests" / "js")


def _docs(overlay: str) -> list[dict]:
    return json.loads(_node(["--to-json"], _render(overlay)).stdout)


def _containers(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]
            for d in docs if d["kind"] in ("StatefulSet", "Deployment")}


def test_generated_manifests_are_current() -> None:
    for name, text in generate.render().items():
        committed = (ROOT / "deploy" / "k8s" / "base" / "generated" / name).read_text()
        assert committed == text, f"deploy/k8s/base/generated/{name} drifted: run `python -m deploy.k8s.generate`"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_is_valid_against_its_schema(overlay: str) -> None:
    done = _node([], _render(overlay))
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {line.split()[1] for line in done.stdout.splitlines()}
    assert {"apps/v1/StatefulSet", "keda.sh/v1alpha1/ScaledObject", "kafka.strimzi.io/v1/KafkaUser",
            "kafka.strimzi.io/v1/KafkaTopic", "monitoring.coreos.com/v1/PrometheusRule",
            "networking.k8s.io/v1/NetworkPolicy"} <= kinds


def test_the_strimzi_resources_are_v1_and_the_generator_writes_v1beta2_for_older_strimzi(tmp_path) -> None:
    """Strimzi 1.x serves KafkaTopic and KafkaUser only as v1 (the committed files); a cluster
    on Strimzi 0.4x-0.51 gets v1beta2 from `generate --strimzi-api-version v1beta2`, valid
    against that version's schema."""
    committed = "".join((ROOT / "deploy" / "k8s" / "base" / "generated" / f).read_text()
                        for f in ("kafkatopics.yaml", "kafkausers.yaml"))
    assert set(re.findall(r"^apiVersion: (\S+)$", committed, re.M)) == {"kafka.strimzi.io/v1"}
    generate.main(["--strimzi-api-version", "v1beta2", "--out", str(tmp_path)])
    older = "---\n".join((tmp_path / f).read_text() for f in ("kafkatopics.yaml", "kafkausers.yaml"))
    assert set(re.findall(r"^apiVersion: (\S+)$", older, re.M)) == {"kafka.strimzi.io/v1beta2"}
    done = _node([], older)
    assert done.returncode == 0, done.stdout
    assert "valid kafka.strimzi.io/v1beta2/KafkaUser slipguard-join" in done.stdout


def test_the_validation_rejects_a_broken_manifest() -> None:
    broken = _render("prod").replace("maxReplicaCount: 12", "maxReplicaCount: twelve", 1)
    done = _node([], broken)
    assert done.returncode == 1 and "INVALID keda.sh/v1alpha1/ScaledObject" in done.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_manifests_agree_with_the_code(overlay: str) -> None:
    docs = _docs(overlay)
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert config["SLIPGUARD_METRICS_HOST"] == "0.0.0.0", "probes and Prometheus reach the pod's address"
    fields = {f"SLIPGUARD_{name.upper()}" for name in Settings.model_fields}
    containers = _containers(docs)
    ports = {"join": 9400, "recover": 9401, "lag": 9402}
    users = {d["metadata"]["name"]: d for d in docs if d["kind"] == "KafkaUser"}
    for name, c in containers.items():
        parsed = build_parser().parse_args(c["args"])  # a real command
        assert parsed.handler is not None
        env = {e["name"]: e for e in c.get("env", [])}
        for var in list(config) + list(env):
            assert var.removesuffix("_FILE") in fields, f"{name}: {var} is not a setting"
        assert [p["containerPort"] for p in c["ports"]] == [ports[c["args"][0]]]
        assert env["SLIPGUARD_METRICS_PORT"]["value"] == str(ports[c["args"][0]])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in c:
                assert c[probe]["httpGet"]["path"] in PATHS and c[probe]["httpGet"]["port"] == "metrics"
        sec = c["securityContext"]
        assert sec["readOnlyRootFilesystem"] and not sec["allowPrivilegeEscalation"]
        assert sec["capabilities"]["drop"] == ["ALL"]
        user = env["SLIPGUARD_KAFKA_SASL_USERNAME"]["value"]
        assert user in users, f"{name} connects as {user}, which has no KafkaUser"
    join = containers["slipguard-join"]
    assert {e["name"]: e for e in join["env"]}["SLIPGUARD_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.name", "a restarted join pod fences its own predecessor"
    assert set(users) == {f"slipguard-{role}" for role in acls.ROLES}

    s = generate.settings_of_config_map()
    topics = {d["spec"]["topicName"]: d for d in docs if d["kind"] == "KafkaTopic"}
    assert topics[s.changelog_topic]["spec"]["config"]["cleanup.policy"] == "compact"
    assert len({topics[t]["spec"]["partitions"] for t in (s.payments_topic, s.orders_topic, s.changelog_topic)}) == 1
    groups = {"slipguard-join": s.join_group, "slipguard-writer": s.recover_group}
    for so in (d for d in docs if d["kind"] == "ScaledObject"):
        spec = so["spec"]
        assert spec["maxReplicaCount"] <= s.partitions, "never more workers than partitions"
        assert spec["cooldownPeriod"] >= 300
        query = spec["triggers"][0]["metadata"]["query"]
        assert re.fullmatch(r'max\(slipguard_consumer_lag_seconds\{group="([^"]+)"\}\)', query), query
        assert f'group="{groups[so["metadata"]["name"]]}"' in query
    exporter = containers["slipguard-lag-exporter"]
    assert next(d for d in docs if d["metadata"]["name"] == "slipguard-lag-exporter"
                and d["kind"] == "Deployment")["spec"]["replicas"] == 1, "the only exporter of group lag"
    assert exporter["args"][:2] == ["lag", "--serve"]


def test_the_lag_metric_autoscaling_reads_is_the_one_the_exporter_serves() -> None:
    text = (ROOT / "streams" / "ops" / "exporter.py").read_text()
    assert "slipguard_consumer_lag_seconds" in text


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_join_and_writer_checks_payment_signatures(overlay: str) -> None:
    """A writer without the key inserts any forged recovery the join would have refused:
    each workload running `join` or `recover` reads the key from the slipguard-hmac Secret."""
    docs = _docs(overlay)
    workloads = [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")]
    checked = []
    for d in workloads:
        pod = d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        if c["args"][0] not in ("join", "recover"):
            continue
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        path = env.get("SLIPGUARD_PAYMENT_HMAC_KEY_FILE")
        assert path, f"{d['metadata']['name']}: no SLIPGUARD_PAYMENT_HMAC_KEY_FILE"
        mount = next((m for m in c.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
        assert mount is not None, f"{d['metadata']['name']}: {path} is on no volume"
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume.get("secret", {}).get("secretName") == "slipguard-hmac", f"{d['metadata']['name']}: {volume}"
        checked.append(c["args"][0])
    assert sorted(set(checked)) == ["join", "recover"]


IMAGE_BY_DIGEST = re.compile(r"registry\.example\.com/slipguard(:[\w.-]+)?@(sha256:[0-9a-f]{64})")


def test_every_container_runs_the_image_by_digest_and_every_overlay_the_same_one() -> None:
    """A tag can be moved to other bytes; a digest cannot: dev runs what prod will run."""
    digests = set()
    for overlay in OVERLAYS:
        for name, c in _containers(_docs(overlay)).items():
            match = IMAGE_BY_DIGEST.fullmatch(c["image"])
            assert match, f"{overlay}/{name}: {c['image']} is not named by digest"
            digests.add(match.group(2))
    assert len(digests) == 1, digests


def test_the_dockerfile_base_is_named_by_digest() -> None:
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=(\S+)$", dockerfile, re.M)
    assert base and re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base.group(1)), base


def test_pin_writes_a_digest_into_the_overlays_and_refuses_anything_else(tmp_path) -> None:
    import shutil

    from deploy.k8s import pin

    shutil.copytree(ROOT / "deploy" / "k8s", tmp_path / "k8s", ignore=shutil.ignore_patterns("__pycache__"))
    overlays = tmp_path / "k8s" / "overlays"
    new = "sha256:" + "ab" * 32
    pin.main([new, "--overlays", str(overlays)])
    for overlay in OVERLAYS:
        done = subprocess.run(["kubectl", "kustomize", str(overlays / overlay)], capture_output=True, text=True,
                              timeout=60)
        images = set(re.findall(r"image: (\S+)", done.stdout))
        assert images == {f"registry.example.com/slipguard:0.1.0@{new}"}, images
    for bad in ("latest", "sha256:abc", "0.1.0"):
        with pytest.raises(pin.PinError, match="expected a digest like sha256:<64 hex digits>"):
            pin.pin(bad, [overlays / "prod"])
    (overlays / "dev" / "kustomization.yaml").write_text("resources: [../../base]\n")
    with pytest.raises(pin.PinError, match=r"expected one `digest: sha256:\.\.\.` line under images:, found 0"):
        pin.pin(new, [overlays / "dev"])
