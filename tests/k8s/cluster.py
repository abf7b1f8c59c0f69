"""A real Kubernetes API server for the tests: Debian's etcd and kube-apiserver (built by
deploy/local/tools.sh into its cache) on loopback, with no controllers and no nodes. What
the manifests meet here is what they meet on a cluster at `kubectl apply`: the API's own
validation (strict: unknown and duplicate fields are errors), the CRDs' schemas and CEL
rules, namespaces, and the admission chain (Pod Security, ValidatingAdmissionPolicies).
Nothing is scheduled or run."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SLIPGUARD_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slipguard") / "k8s"
KUBE_APISERVER = CACHE / "bin" / "kube-apiserver"
CRDS = CACHE / "crds"
MISSING = "run `make tools` (deploy/local/tools.sh builds and caches it)"


class ApiServerError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_tools() -> list[str]:
    """What this needs and does not find, each with how to get it."""
    out = [f"{tool} not found: {MISSING}" for tool in ("etcd", "kubectl", "openssl") if shutil.which(tool) is None]
    if not os.access(KUBE_APISERVER, os.X_OK):
        out.append(f"{KUBE_APISERVER} not found: {MISSING}")
    if not list(CRDS.glob("*.yaml")):
        out.append(f"no CRDs in {CRDS}: {MISSING}")
    return out


class ApiServer:
    """etcd and kube-apiserver on free loopback ports, their data in `workdir`; `kubectl()`
    talks to it as a member of system:masters (a static token)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.procs: list[subprocess.Popen] = []
        self.token = secrets.token_hex(16)
        self.port = 0

    def start(self, timeout: float = 120) -> None:
        d = self.dir
        (d / "etcd").mkdir(parents=True, mode=0o700)
        client, peer = _free_port(), _free_port()
        self._spawn("etcd", ["etcd", "--name", "test", "--data-dir", str(d / "etcd"),
                             "--listen-client-urls", f"http://127.0.0.1:{client}",
                             "--advertise-client-urls", f"http://127.0.0.1:{client}",
                             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-cluster", f"test=http://127.0.0.1:{peer}", "--log-level", "warn"])
        subprocess.run(["openssl", "genrsa", "-out", str(d / "sa.key"), "2048"], check=True, capture_output=True)
        (d / "tokens.csv").write_text(f"{self.token},test-admin,test-admin,system:masters\n")
        self.port = _free_port()
        # Loopback only, RBAC, a self-signed serving certificate (made in cert-dir), static tokens;
        # no Service endpoints to keep (--endpoint-reconciler-type=none: there is no node).
        self._spawn("kube-apiserver", [
            str(KUBE_APISERVER), f"--etcd-servers=http://127.0.0.1:{client}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1", f"--secure-port={self.port}", f"--cert-dir={d / 'certs'}",
            f"--token-auth-file={d / 'tokens.csv'}", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={d / 'sa.key'}", f"--service-account-signing-key-file={d / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16", "--endpoint-reconciler-type=none",
            # As clusters are set up (kubeadm does): privileged pods are left to admission (Pod
            # Security), not refused outright, so the namespace's policy is what is tested.
            "--allow-privileged=true"])
        (d / "kubeconfig").write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            # (the serving certificate is the server's own, made at start, on loopback)
            "clusters": [{"name": "test", "cluster": {"server": f"https://127.0.0.1:{self.port}",
                                                      "insecure-skip-tls-verify": True}}],
            "users": [{"name": "test", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
        self._wait_ready(timeout)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 (kept open for the process)
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def _wait_ready(self, timeout: float) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        request = urllib.request.Request(f"https://127.0.0.1:{self.port}/readyz",
                                         headers={"Authorization": f"Bearer {self.token}"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise ApiServerError(f"{p.args[0]} exited with {p.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(request, context=ctx, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise ApiServerError(f"kube-apiserver not ready after {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                         for log in sorted(self.dir.glob("*.log")))

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["kubectl", f"--kubeconfig={self.dir / 'kubeconfig'}", *args], input=input,
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
