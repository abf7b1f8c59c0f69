"""slipguard's Kubernetes manifests on a real API server (tests/k8s/cluster.py, Kubernetes
1.37 with the CRDs of Strimzi 1.2, KEDA 2.21 and the Prometheus operator 0.85): each overlay
creates its namespace, passes a server-side dry run with strict validation and the
platform's admission rules (restricted Pod Security, requests and limits, probes), is
applied for real and read back as written. Deliberately broken copies are refused, each for
its own reason, so every check is seen to bite."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.k8s import generate

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "prod")
WORKLOADS = ("StatefulSet", "Deployment")


def _render(overlay: str) -> list[dict]:
    done = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _yaml(docs: list[dict]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def _apply(cluster, docs: list[dict], *flags: str) -> subprocess.CompletedProcess:
    """`kubectl apply` as a careful team runs it: strict validation (an unknown or duplicate
    field is an error, not dropped) and the server's warnings (Pod Security's among them)
    taken as errors."""
    return cluster.kubectl("apply", "--validate=strict", "--warnings-as-errors", *flags, "-f", "-", input=_yaml(docs))


def _namespace_of(docs: list[dict]) -> str:
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces, f"every object in one namespace: {namespaces}"
    return namespaces.pop()


def _pods_of(docs: list[dict]) -> list[dict]:
    """A Pod from each workload's template, as its controller would create it: Pod Security
    enforces on Pods (for workloads it only warns)."""
    return [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": f"{d['metadata']['name']}-0", "namespace": d["metadata"]["namespace"],
                          "labels": d["spec"]["template"]["metadata"].get("labels", {})},
             "spec": d["spec"]["template"]["spec"]} for d in docs if d["kind"] in WORKLOADS]


def _prepare_namespace(cluster, docs: list[dict]) -> None:
    """Create the overlay's Namespace for real, and its default ServiceAccount (which the
    controller manager, not running here, makes in a cluster; Pod admission looks it up)."""
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    assert namespaces, "the overlay creates no Namespace: applied to a fresh cluster, every object is refused"
    done = _apply(cluster, namespaces)
    assert done.returncode == 0, done.stderr
    sa = {"apiVersion": "v1", "kind": "ServiceAccount",
          "metadata": {"name": "default", "namespace": namespaces[0]["metadata"]["name"]}}
    done = _apply(cluster, [sa])
    assert done.returncode == 0, done.stderr


def _differences(stored, written, path: str = "") -> list[str]:
    """Where `stored` (read back from the server) lacks or changes what was written; fields
    the server adds (defaults, status, metadata) are not differences."""
    if isinstance(written, dict):
        if not isinstance(stored, dict):
            return [f"{path}: {stored!r} is not an object"]
        return [d for k, v in written.items() for d in _differences(stored.get(k), v, f"{path}.{k}")]
    if isinstance(written, list):
        if not isinstance(stored, list) or len(stored) != len(written):
            return [f"{path}: {stored!r} != {written!r}"]
        pairs = enumerate(zip(stored, written, strict=False))
        return [d for i, (s, w) in pairs for d in _differences(s, w, f"{path}[{i}]")]
    return [] if stored == written else [f"{path}: {stored!r} != {written!r}"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_is_admitted_applied_and_read_back_as_written(cluster, overlay: str) -> None:
    docs = _render(overlay)
    namespace = _namespace_of(docs)
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"] == [namespace], \
        "the overlay creates the namespace its objects are in"
    _prepare_namespace(cluster, docs)

    # A server-side dry run: the API's schemas (strict), the CRDs', every admission step.
    done = _apply(cluster, docs, "--dry-run=server")
    assert done.returncode == 0, done.stderr
    pods = _pods_of(docs)
    assert len(pods) == 3
    done = _apply(cluster, pods, "--dry-run=server")
    assert done.returncode == 0, f"refused under the restricted Pod Security Standard: {done.stderr}"
    stored = cluster.kubectl("get", "statefulsets", "-n", namespace, "-o", "name").stdout
    assert stored == "", "a dry run stores nothing"

    # For real, as docs/deploying.md says (kubectl apply -k), then every object read back.
    done = cluster.kubectl("apply", "--validate=strict", "--warnings-as-errors", "-k",
                           str(ROOT / "deploy" / "k8s" / "overlays" / overlay))
    assert done.returncode == 0, done.stderr
    for d in docs:
        ref = f"{d['kind']}.{d['apiVersion'].split('/')[0] if '/' in d['apiVersion'] else ''}".rstrip(".")
        args = ["get", f"{ref}/{d['metadata']['name']}", "-o", "json"]
        args += ["-n", namespace] if d["kind"] != "Namespace" else []
        got = cluster.kubectl(*args)
        assert got.returncode == 0, got.stderr
        assert _differences(json.loads(got.stdout), d) == [], f"{d['kind']} {d['metadata']['name']}"


def test_the_api_server_is_kubernetes_1_37_and_strimzi_serves_only_v1(cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"].startswith("v1.37.")
    for crd in ("kafkatopics.kafka.strimzi.io", "kafkausers.kafka.strimzi.io"):
        spec = json.loads(cluster.kubectl("get", "crd", crd, "-o", "json").stdout)["spec"]
        assert [v["name"] for v in spec["versions"] if v["served"]] == ["v1"], crd


# Broken copies: each made from the dev overlay in a namespace of its own, and each refused
# by the API server with the reason it is broken for.

def _broken(name: str, docs: list[dict]) -> list[dict]:
    """`docs` moved to the namespace `broken-<name>`."""
    out = copy.deepcopy(docs)
    for d in out:
        if d["kind"] == "Namespace":
            d["metadata"]["name"] = f"broken-{name}"
        else:
            d["metadata"]["namespace"] = f"broken-{name}"
    return out


def _workload(docs: list[dict], name: str) -> dict:
    return next(d for d in docs if d["kind"] in WORKLOADS and d["metadata"]["name"] == name)


def test_objects_of_a_namespace_that_does_not_exist_are_refused(cluster) -> None:
    docs = [d for d in _broken("no-namespace", _render("dev")) if d["kind"] != "Namespace"]
    done = _apply(cluster, docs)
    assert done.returncode != 0 and 'namespaces "broken-no-namespace" not found' in done.stderr, done.stderr


def test_a_v1beta2_strimzi_resource_is_refused_by_strimzi_1(cluster, tmp_path) -> None:
    docs = _broken("strimzi-v1beta2", _render("dev"))
    _prepare_namespace(cluster, docs)
    generate.main(["--strimzi-api-version", "v1beta2", "--out", str(tmp_path)])
    older = [d for d in yaml.safe_load_all((tmp_path / "kafkausers.yaml").read_text()) if d]
    for d in older:
        d["metadata"]["namespace"] = "broken-strimzi-v1beta2"
    done = _apply(cluster, older, "--dry-run=server")
    assert done.returncode != 0, done.stdout
    assert 'no matches for kind "KafkaUser" in version "kafka.strimzi.io/v1beta2"' in done.stderr, done.stderr


def _refused(cluster, name: str, docs: list[dict], expected: str, what: str = "dry run") -> None:
    done = _apply(cluster, docs, "--dry-run=server")
    assert done.returncode != 0, f"{name}: the {what} was accepted: {done.stdout}"
    assert expected in done.stderr, f"{name}: {done.stderr}"


def test_a_privileged_or_root_container_is_refused_under_restricted_pod_security(cluster) -> None:
    docs = _broken("pod-security", _render("dev"))
    _prepare_namespace(cluster, docs)
    privileged, root = copy.deepcopy(docs), copy.deepcopy(docs)
    container = _workload(privileged, "slipguard-join")["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] |= {"privileged": True, "allowPrivilegeEscalation": True}
    pod = _workload(root, "slipguard-writer")["spec"]["template"]["spec"]
    pod["securityContext"] = {**pod["securityContext"], "runAsNonRoot": False, "runAsUser": 0}
    for name, broken, workload in (("privileged", privileged, "slipguard-join"), ("root", root, "slipguard-writer")):
        pods = [p for p in _pods_of(broken) if p["metadata"]["name"] == f"{workload}-0"]
        _refused(cluster, name, pods, 'violates PodSecurity "restricted:latest"', "pod")
        # The workload itself: the API server warns, and a careful apply stops on it.
        _refused(cluster, name, [_workload(broken, workload)], 'would violate PodSecurity "restricted:latest"')


def test_a_container_without_limits_probes_or_image_digest_is_refused_by_the_platform_policy(cluster) -> None:
    docs = _broken("platform-policy", _render("dev"))
    _prepare_namespace(cluster, docs)
    no_limits, no_probe = copy.deepcopy(docs), copy.deepcopy(docs)
    del _workload(no_limits, "slipguard-writer")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    del _workload(no_probe, "slipguard-lag-exporter")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    _refused(cluster, "no limits", [_workload(no_limits, "slipguard-writer")],
             "every container needs requests and limits of cpu and memory; without: writer")
    _refused(cluster, "no readiness probe", [_workload(no_probe, "slipguard-lag-exporter")],
             "needs a livenessProbe and a readinessProbe; without: lag-exporter")
    by_tag = copy.deepcopy(_workload(docs, "slipguard-join"))
    by_tag["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example.com/slipguard:0.1.0"
    _refused(cluster, "image by tag", [by_tag], "named by digest (name@sha256:...); by tag only: "
                                                "registry.example.com/slipguard:0.1.0")


def test_unknown_fields_and_values_outside_a_crd_schema_are_refused(cluster) -> None:
    docs = _broken("schemas", _render("dev"))
    _prepare_namespace(cluster, docs)
    typo = copy.deepcopy(_workload(docs, "slipguard-join"))
    typo["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {"runAsNonRoot": True}
    _refused(cluster, "typo", [typo], 'unknown field "spec.template.spec.containers[0].securityContex"')
    scaled = copy.deepcopy(next(d for d in docs if d["kind"] == "ScaledObject"))
    scaled["spec"]["maxReplicaCount"] = "twelve"
    _refused(cluster, "ScaledObject", [scaled], "spec.maxReplicaCount")
    user = copy.deepcopy(next(d for d in docs if d["kind"] == "KafkaUser"))
    user["spec"]["authorization"]["acls"][0]["operations"] = ["Fly"]
    _refused(cluster, "KafkaUser", [user], 'Unsupported value: "Fly"')
