"""The container image (deploy/docker/Dockerfile), built here with buildah
(deploy/docker/image.sh; layers cached between runs), run as a user would run it: the join
and the writer from the image against the local stack, end to end, as a non-root user,
with nothing written to the image's root filesystem; SIGTERM stops a containerised
worker cleanly. Nothing left to chance in it: built on its base by digest, labelled, and
carrying an SBOM of what is installed in it; its pushed digest is what the overlays pin."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from tests.integration.test_join import _historical
from tests.integration.test_recover import writer_settings
from tests.integration.workers import ROOT, assert_recovered_once, wait_until_done

TAG = "localhost/slipguard:test"


@pytest.fixture(scope="module")
def image() -> str:
    built = subprocess.run(["bash", "deploy/docker/image.sh", TAG], cwd=ROOT, capture_output=True, text=True,
                           timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    return built.stdout.strip().splitlines()[-1]


class Container:
    """`buildah from` the image, and one command run in it (`buildah run`, chroot isolation,
    the host's network), as the image's user."""

    def __init__(self, image: str) -> None:
        self.name = subprocess.run(["buildah", "from", "--quiet", image], capture_output=True, text=True,
                                   check=True).stdout.strip()
        self.root = Path(subprocess.run(["buildah", "mount", self.name], capture_output=True, text=True,
                                        check=True).stdout.strip())
        self.proc: subprocess.Popen | None = None

    def start(self, env: dict[str, str], args: list[str], log: Path) -> subprocess.Popen:
        flags = [f"--env={k}={v}" for k, v in env.items()]
        self.proc = subprocess.Popen(["buildah", "run", "--isolation", "chroot", "--network", "host",
                                      "--user", "10001:10001", *flags, self.name, "--", "/opt/slipguard/bin/slipguard",
                                      *args], stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        return self.proc

    def worker_pid(self) -> int:
        """The slipguard process inside: the deepest under buildah run (runtime, exec, it)."""
        assert self.proc is not None
        pid = self.proc.pid
        for _ in range(10):
            children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
            if not children:
                break
            pid = int(children[0])
        assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/opt/slipguard/bin/python"), pid
        return pid

    def stop_all(self) -> None:
        """Whatever is still running of this container's command (a failed test)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(AssertionError, OSError):  # no worker (yet, or any more)
                os.kill(self.worker_pid(), signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(10)

    def changed_files(self, since: float) -> list[str]:
        """Files of the root filesystem modified since `since`, outside /tmp, /proc, /dev, /sys, /run."""
        skip = {"tmp", "proc", "dev", "sys", "run", "etc"}  # (etc: buildah writes resolv.conf and hosts for a run)
        found = []
        for top in self.root.iterdir():
            if top.name in skip:
                continue
            for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
                try:
                    if path.lstat().st_mtime > since:
                        found.append(str(path.relative_to(self.root)))
                except OSError:
                    continue
        return found

    def remove(self) -> None:
        subprocess.run(["buildah", "rm", self.name], capture_output=True)


def _env(s) -> dict[str, str]:
    env = s.to_env() | {"SLIPGUARD_METRICS_PORT": "0"}
    env.pop("SLIPGUARD_CORE", None)  # the image's default core: native, as it is built
    return env


def test_the_image_runs_the_join_and_the_writer_end_to_end_and_stops_cleanly_on_sigterm(image, base_settings,
                                                                                          tmp_path) -> None:
    s = writer_settings(base_settings)
    exp = _historical(s, 1_500, seed=81)
    started = time.time()
    join, writer = Container(image), Container(image)
    logs = {"join": tmp_path / "join.log", "writer": tmp_path / "writer.log"}
    try:
        join.start(_env(s), ["join"], logs["join"])
        writer.start(_env(s), ["recover"], logs["writer"])
        wait_until_done(s, exp.payments + exp.orders, timeout=120)
        assert_recovered_once(s, exp.recovered)
        url = s.database_url.get_secret_value()
        deadline, rows = time.monotonic() + 90, []
        while time.monotonic() < deadline and len(rows) < len(exp.recovered):
            with psycopg.connect(url) as conn:
                rows = [r[0] for r in conn.execute("SELECT payment_id FROM recovery_audit").fetchall()]
            time.sleep(0.5)
        assert len(rows) == len(exp.recovered) and max(Counter(rows).values()) == 1, "every recovery written once"
        for c in (join, writer):
            os.kill(c.worker_pid(), signal.SIGTERM)
        codes = {name: c.proc.wait(60) for name, c in (("join", join), ("writer", writer))}  # type: ignore[union-attr]
        assert codes == {"join": 0, "writer": 0}, {n: logs[n].read_text()[-3000:] for n in logs}
        assert "join worker stopped cleanly" in logs["join"].read_text()
        assert "join core: native (slipguard_native " in logs["join"].read_text(), \
            "the image's join runs the native record path its builder stage compiled"
        for log in logs.values():
            assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
        assert join.changed_files(started) == [] and writer.changed_files(started) == [], \
            "the workers wrote to the image's root filesystem (it must run read-only)"
    finally:
        for c in (join, writer):
            c.stop_all()
            c.remove()


def _inspect(image: str) -> dict:
    return json.loads(subprocess.run(["buildah", "inspect", "--type", "image", image], capture_output=True,
                                     text=True, check=True).stdout)


def test_the_image_is_labelled_runs_as_a_user_and_has_one_entrypoint(image) -> None:
    config = _inspect(image)["OCIv1"]["config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/opt/slipguard/bin/slipguard"]
    labels = config["Labels"]
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert labels["org.opencontainers.image.title"] == "slipguard"
    assert labels["org.opencontainers.image.revision"] == revision
    assert labels["org.opencontainers.image.version"] and labels["org.opencontainers.image.licenses"]
    assert labels["dev.slipguard.sbom"] == "/opt/slipguard/sbom.cdx.json"


def test_the_image_is_built_on_its_base_named_by_digest(image) -> None:
    base = _inspect(image)["OCIv1"]["config"]["Labels"]["org.opencontainers.image.base.name"]
    name, _, digest = base.partition("@")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), base
    local = subprocess.run(["buildah", "images", "--no-trunc", "--format", "{{.Digest}}", f"{name}:bookworm"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert digest in local, f"the image says it was built on {base}; the base here has {local}"


def test_the_image_carries_an_sbom_of_exactly_what_is_installed_in_it(image) -> None:
    """Every distribution in the image's venv is in the SBOM at its installed version, every
    package of requirements.lock at its locked version with the lock's hashes, and the base's
    Debian packages are listed too."""
    c = Container(image)
    try:
        bom = json.loads((c.root / "opt/slipguard/sbom.cdx.json").read_text())
        installed = {}
        for info in (c.root / "opt/slipguard/lib").glob("python3*/site-packages/*.dist-info"):
            name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
            installed[re.sub(r"[-_.]+", "-", name).lower()] = version
        dpkg = (c.root / "var/lib/dpkg/status").read_text()
    finally:
        c.remove()
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    assert bom["metadata"]["component"]["purl"] == f"pkg:pypi/slipguard@{installed.pop('slipguard')}"
    pypi = {c["purl"].removeprefix("pkg:pypi/").split("@")[0]: c for c in bom["components"]
            if c["purl"].startswith("pkg:pypi/")}
    assert {name: c["version"] for name, c in pypi.items()} == installed
    lock = (ROOT / "deploy" / "docker" / "requirements.lock").read_text()
    blocks = re.split(r"^(?=[A-Za-z0-9_.-]+==)", lock, flags=re.M)[1:]
    assert len(blocks) > 30
    for block in blocks:
        name, version = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block).groups()
        entry = pypi[re.sub(r"[-_.]+", "-", name).lower()]
        assert entry["version"] == version, name
        assert {p["value"] for p in entry["properties"]} == set(re.findall(r"sha256:([0-9a-f]{64})", block)), name
    debs = {c["name"] for c in bom["components"] if c["purl"].startswith("pkg:deb/")}
    assert len(debs) == dpkg.count("Status: install ok installed") and {"python3", "ca-certificates"} <= debs


def test_the_pushed_image_digest_is_what_the_overlays_pin(image, tmp_path) -> None:
    """`make pin-image`'s procedure: push (here to an OCI layout, as a registry stores it),
    then `python -m deploy.k8s.pin` with the digest the push reports: every workload of
    every overlay then runs exactly those bytes."""
    from deploy.k8s import pin

    digestfile = tmp_path / "digest"
    subprocess.run(["buildah", "push", "--quiet", "--digestfile", str(digestfile), image,
                    f"oci:{tmp_path / 'layout'}:0.1.0"], check=True, capture_output=True)
    digest = digestfile.read_text().strip()
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [digest]
    shutil.copytree(ROOT / "deploy" / "k8s", tmp_path / "k8s", ignore=shutil.ignore_patterns("__pycache__"))
    pin.main([digest, "--overlays", str(tmp_path / "k8s" / "overlays")])
    for overlay in ("dev", "prod"):
        rendered = subprocess.run(["kubectl", "kustomize", str(tmp_path / "k8s" / "overlays" / overlay)],
                                  capture_output=True, text=True, check=True).stdout
        assert set(re.findall(r"image: (\S+)", rendered)) == {f"registry.example.com/slipguard:0.1.0@{digest}"}
