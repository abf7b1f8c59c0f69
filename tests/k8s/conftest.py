from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.k8s.cluster import CRDS, ApiServer, missing_tools

POLICY = Path(__file__).with_name("platform-policy.yaml")


@pytest.fixture(scope="session")
def cluster():
    """One API server for the session, with the CRDs of KEDA, the Prometheus operator and
    Strimzi installed and the platform's admission policy in force."""
    missing = missing_tools()
    if missing:
        pytest.fail("; ".join(missing))  # never a skip: `make test` must not pass without these checks
    shm = Path("/dev/shm")  # etcd fsyncs every write: in memory, the whole setup takes seconds
    workdir = Path(tempfile.mkdtemp(prefix="slipguard-apiserver-", dir=shm if shm.is_dir() else None))
    api = ApiServer(workdir)
    try:
        api.start()
        # Server-side: KEDA's ScaledJob CRD is larger than the annotation a client-side apply keeps.
        done = api.kubectl("apply", "--server-side", "-f", str(CRDS))
        assert done.returncode == 0, done.stderr
        done = api.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        assert done.returncode == 0, done.stderr
        done = api.kubectl("apply", "-f", str(POLICY))
        assert done.returncode == 0, done.stderr
        _wait_for_policy(api)
        yield api
    finally:
        api.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_for_policy(api: ApiServer, timeout: float = 30) -> None:
    """A new ValidatingAdmissionPolicy is enforced once the API server has compiled it (about
    a second): until a workload without limits is refused, nothing is proven by an accepted one."""
    import time

    probe = ('{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "probe", "namespace": "default"},'
             ' "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},'
             ' "spec": {"containers": [{"name": "c", "image": "x"}]}}}}')
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = api.kubectl("apply", "--dry-run=server", "-f", "-", input=probe)
        if done.returncode != 0 and "platform-workload-rules" in done.stderr:
            return
        time.sleep(0.5)
    raise AssertionError(f"the platform policy is not enforced after {timeout:.0f} s: {done.stderr}")
