"""`slipguard bench-ab --against REF`: this tree's join against another commit's, on the same
broker and the same records, interleaved, so that a change to the per-record path shows
its cost before it lands.

Each workload of `slipguard bench` (WORKLOADS) is produced once; then, run after run,
each tree's join drains it in a process of its own (a fresh group, so it reads from the
start), in alternating order: events/s and CPU seconds per million events, each run and
the medians. A tree is `git archive REF streams schemas`, or this tree's copied at the
start, run with its own code only. REF may name several commits (A,B,C): each is a side,
compared with the first (to find which commit of a range cost what). `cores` runs this tree once per join core
(SLIPGUARD_CORE: "native", "python"), each a side of its own; the reference tree runs
with its own default.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from streams.kafka.topics import create_topics
from streams.settings import Settings
from streams.tools import bench

ROOT = Path(__file__).resolve().parents[2]
# Runs in either tree: bench.drain has kept this signature (it lived in streams/bench.py
# before the layout step; tune_gc came later).
_DRAIN = """
import json, sys
from streams.settings import load_settings
try:
    from streams.tools import bench
except ImportError:
    from streams import bench
try:
    from streams.join.worker import tune_gc
    tune_gc()
except ImportError:
    pass
rate, cpu, *_ = bench.drain(load_settings(), int(sys.argv[1]))
print(json.dumps({"events_per_s": rate, "cpu_s_per_million": cpu}))
"""


@dataclass
class Side:
    name: str
    tree: Path
    core: str | None = None  # SLIPGUARD_CORE for this side; None: the tree's default
    events_per_s: list[float] = field(default_factory=list)
    cpu_s_per_million: list[float] = field(default_factory=list)


def archive(ref: str, into: Path) -> Path:
    """`streams/`, `schemas/` and `native/` (where it had one) as they were at `ref`, its
    native module built from its own crate."""
    has_native = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{ref}:native/Cargo.toml"],
                                capture_output=True).returncode == 0
    parts = ["streams", "schemas"] + (["native"] if has_native else [])
    out = subprocess.run(["git", "-C", str(ROOT), "archive", ref, *parts], capture_output=True)
    if out.returncode != 0:
        raise SystemExit(f"slipguard bench-ab: git archive {ref}: {out.stderr.decode().strip()}")
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=out.stdout, check=True)
    return build_native(into)


def snapshot(into: Path) -> Path:
    """This tree's `streams/`, `schemas/` and `native/` as they are now (edits made while the
    bench runs do not reach it), its native module built from that crate."""
    for part in ("streams", "schemas", "native"):
        if (ROOT / part).exists():
            shutil.copytree(ROOT / part, into / part, ignore=shutil.ignore_patterns("__pycache__", "target", "*.so"))
    return build_native(into)


def build_native(tree: Path) -> Path:
    """Build the tree's own crate (if it has one) into the tree, beside `streams/`: run with
    PYTHONPATH=tree, each side imports its own slipguard_native, not the one installed here.
    A tree without a crate imports none (its join has no native core, or runs the Python one)."""
    crate = tree / "native"
    if not (crate / "Cargo.toml").exists():
        (tree / "slipguard_native.py").write_text("raise ImportError('this tree has no native crate')\n")
        return tree
    if importlib.util.find_spec("maturin") is None or shutil.which("cargo") is None:
        raise SystemExit("slipguard bench-ab: building the compared trees' native crates needs maturin and cargo "
                         "(make venv installs maturin; cargo from rustup)")
    # Cargo takes a crate for built when its files are older than the last build in the
    # target directory, which the trees share and whose record of that build leaves out
    # which tree it was of: another tree's crate, built later, would be taken for this one.
    # Touched now, each tree's crate is built from its own files.
    now = time.time()
    for f in crate.rglob("*"):
        if f.is_file():
            os.utime(f, (now, now))
    wheels = tree / ".wheels"
    env = os.environ | {"CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR",
                                                           str(Path.home() / ".cache/slipguard/cargo-target-ab"))}
    print(f"bench-ab: building {crate} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "maturin", "build", "--release", "-q", "-m", str(crate / "Cargo.toml"),
                    "-o", str(wheels)], check=True, env=env, stdout=subprocess.DEVNULL)
    [wheel] = wheels.glob("slipguard_native-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tree)
    return tree


def child_env(s: Settings, tree: Path) -> dict[str, str]:
    """The environment of a tree's join: only the settings that differ from this release's
    defaults, so that each tree runs on its own defaults otherwise, as it ships (an older
    tree refuses a value added since, e.g. SLIPGUARD_CHANGELOG_FORMAT=4, or SLIPGUARD_CORE
    before the setting existed). The core is drain_in's to choose."""
    defaults = Settings.model_validate({}).to_env()  # (no environment read)
    env = {k: v for k, v in s.to_env().items() if defaults.get(k) != v and k != "SLIPGUARD_CORE"}
    return env | {"PYTHONPATH": str(tree)}


def drain_in(tree: Path, s: Settings, total: int, core: str | None = None) -> dict[str, float]:
    """One drain of the workload's topics by `tree`'s join, in a fresh group."""
    group = s.derive(join_group=f"ab-{uuid.uuid4().hex[:8]}")
    create_topics(group)  # its changelog: a join older than 2026-11-26 does not create it
    env = child_env(group, tree)
    if core is not None:
        env["SLIPGUARD_CORE"] = core
    run = subprocess.run([sys.executable, "-c", _DRAIN, str(total)], cwd=tree, env=env, capture_output=True,
                         text=True, timeout=1800)
    if run.returncode != 0:
        raise SystemExit(f"slipguard bench-ab: the join of {tree} failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def run(s: Settings, against: str, runs: int, events: int, partitions: int, workloads: list[str],
        cores: list[str] | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="slipguard-ab-") as tmp:
        here = snapshot(Path(tmp) / "here")
        refs = [r for r in against.split(",") if r]
        sides = [Side(ref, archive(ref, Path(tmp) / f"ref-{i}")) for i, ref in enumerate(refs)]
        choices: list[str | None] = [*cores] if cores else [None]
        sides += [Side(f"this tree, {core}" if core else "this tree", here, core) for core in choices]
        lines = [(f"bench-ab: {against} against this tree, {runs} runs each, interleaved, {partitions} partitions, "
                  f"{s.processing_guarantee}")]
        for name in workloads:
            print(f"bench-ab [{name}]: producing {events:,} events ...", file=sys.stderr, flush=True)
            b, total = bench.produce_workload(s.derive(partitions=partitions), name, events)
            for side in sides:
                side.events_per_s.clear()
                side.cpu_s_per_million.clear()
            for i in range(runs):
                for side in (sides if i % 2 == 0 else sides[::-1]):
                    got = drain_in(side.tree, b, total, side.core)
                    side.events_per_s.append(got["events_per_s"])
                    side.cpu_s_per_million.append(got["cpu_s_per_million"])
                    print(f"bench-ab [{name}] run {i + 1} {side.name}: {got['events_per_s']:,.0f} events/s, "
                          f"{got['cpu_s_per_million']:.2f} s CPU per million", file=sys.stderr, flush=True)
            lines += [_row(name, side) for side in sides]
            ref = statistics.median(sides[0].events_per_s)
            for side in sides[1:]:
                lines.append(f"  [{name}] {side.name} / {refs[0]}: "
                             f"{statistics.median(side.events_per_s) / ref:.3f} (medians of events/s)")
        return "\n".join(lines)


def _row(name: str, side: Side) -> str:
    runs = ", ".join(f"{x:,.0f}" for x in side.events_per_s)
    return (f"  [{name}] {side.name:>18}: median {statistics.median(side.events_per_s):,.0f} events/s, "
            f"{statistics.median(side.cpu_s_per_million):.2f} s CPU per million (runs: {runs})")
