"""`make mutation`'s verdict: per module, the share of its non-equivalent mutants that the
pure tests kill, from `mutmut results --all true`; fails under 95 %.

An equivalent mutant (one that changes nothing the join does: a log line's wording, a
cache size, a branch both arms of which end alike) is listed in
tests/mutation/equivalent-<module>.txt, one per line: its name, then " # " and the reason.
A listed mutant that is killed, or that no longer exists, fails too: the list stays true.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).parent
TARGET = 0.95
DETECTED = ("killed", "timeout", "segfault")  # a mutant the tests stop, one way or another


def module_of(mutant: str) -> str:
    """streams.join.core.xǁPartitionJoinǁon_payment__mutmut_3 -> streams.join.core"""
    return re.sub(r"\.(x[ǁ_].*|[^.]*)$", "", mutant.split("__mutmut_")[0])


def equivalents() -> dict[str, str]:
    found = {}
    for path in sorted(HERE.glob("equivalent-*.txt")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, reason = line.partition(" # ")
            if not sep or not reason.strip():
                sys.exit(f"{path.name}:{n}: expected `<mutant> # <why it changes nothing>`")
            found[name.strip()] = reason.strip()
    return found


def main() -> int:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True,
                         text=True, check=True).stdout
    status = {}
    for line in out.splitlines():
        m = re.match(r"^\s*(\S+): (.+)$", line)
        if m:
            status[m.group(1)] = m.group(2)
    listed = equivalents()
    wrong = [f"{name}: listed as equivalent but {status.get(name, 'does not exist')}" for name in listed
             if status.get(name) != "survived"]
    counts: dict[str, Counter[str]] = {}
    for name, st in status.items():
        verdict = "equivalent" if name in listed else st
        counts.setdefault(module_of(name), Counter())[verdict] += 1
    failed = bool(wrong)
    for module, c in sorted(counts.items()):
        live = sum(c.values()) - c["equivalent"]
        detected = sum(c[k] for k in DETECTED)
        score = detected / live if live else 1.0
        failed |= score < TARGET
        print(f"{module:24} {score:6.1%} of {live:4} non-equivalent mutants detected (survived {c['survived']}, "
              f"no tests {c['no tests']}, timeout or crash {c['timeout'] + c['segfault']}, equivalent "
              f"{c['equivalent']})")
    for line in wrong:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
