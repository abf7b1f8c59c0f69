"""The image's software bill of materials: CycloneDX 1.6 JSON, written while the image is
built (deploy/docker/Dockerfile) by the interpreter the image runs, so it lists what was
installed, not what was meant to be: every Python distribution that interpreter sees (the
venv's: the lock's packages, pip, and slipguard itself as the subject), each with its
licence and, for the locked ones, the artifact hashes the lock accepted; and the Debian
packages of the base (dpkg's database). Standard library only.

    /opt/slipguard/bin/python sbom.py --lock requirements.lock --out /opt/slipguard/sbom.cdx.json
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import re
import sys
from pathlib import Path
from typing import Any

SUBJECT = "slipguard"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(lock: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, accepted sha256 hashes), from a pip-compile --generate-hashes file."""
    out = {}
    for block in re.split(r"^(?=[A-Za-z0-9_.-]+==)", lock, flags=re.M)[1:]:
        head = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        assert head is not None
        out[normalise(head.group(1))] = (head.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


def licenses(dist: md.Distribution) -> list[dict]:
    meta: Any = dist.metadata  # (an email.message.Message at run time; its protocol type lists no get())
    if meta.get("License-Expression"):
        return [{"expression": meta["License-Expression"]}]
    names = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    if not names and meta.get("License") and len(meta["License"]) <= 100:  # (some put the whole text here)
        names = [meta["License"].strip()]
    return [{"license": {"name": n}} for n in names if n and n != "UNKNOWN"]


def python_components(lock: dict[str, tuple[str, list[str]]]) -> tuple[dict, list[dict]]:
    subject, components = None, []
    for dist in md.distributions():
        name, version = dist.metadata["Name"], dist.version
        purl = f"pkg:pypi/{normalise(name)}@{version}"
        entry: dict[str, Any] = {"type": "library", "bom-ref": purl, "name": name, "version": version, "purl": purl}
        if licenses(dist):
            entry["licenses"] = licenses(dist)
        pin = lock.get(normalise(name))
        if pin and pin[0] == version:
            entry["properties"] = [{"name": "slipguard:lock:sha256", "value": h} for h in pin[1]]
        if normalise(name) == SUBJECT:
            subject = {**entry, "type": "application"}
        else:
            components.append(entry)
    if subject is None:
        sys.exit(f"sbom: {SUBJECT} is not installed in {sys.prefix}")
    return subject, components


def debian_components(status: Path = Path("/var/lib/dpkg/status")) -> list[dict]:
    out = []
    text = status.read_text(errors="replace") if status.exists() else ""
    for para in text.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", para, re.M))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            purl = f"pkg:deb/debian/{fields['Package']}@{fields['Version']}?arch={fields.get('Architecture', 'all')}"
            out.append({"type": "library", "bom-ref": purl, "name": fields["Package"], "version": fields["Version"],
                        "purl": purl})
    return out


def interpreter() -> list[dict]:
    """CPython itself when it is not one of dpkg's packages (the official python images build it)."""
    if sys.base_prefix.startswith("/usr/local") or not sys.base_prefix.startswith("/usr"):
        purl = f"pkg:generic/cpython@{platform.python_version()}"
        return [{"type": "application", "bom-ref": purl, "name": "cpython", "version": platform.python_version(),
                 "purl": purl}]
    return []


def bom(lock_text: str) -> dict:
    subject, python = python_components(locked(lock_text))
    components = sorted(python + debian_components() + interpreter(), key=lambda c: c["bom-ref"])
    return {"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1,
            "metadata": {"component": subject,
                         "tools": {"components": [{"type": "application", "name": "slipguard deploy/docker/sbom.py"}]}},
            "components": components}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, required=True, help="requirements.lock (pip-compile --generate-hashes)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.write_text(json.dumps(bom(args.lock.read_text()), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
