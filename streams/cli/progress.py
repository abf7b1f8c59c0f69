"""Progress of long commands on a terminal (stderr), nothing when piped or with --json."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

Report = Callable[[str, int, int], None]


class Progress:
    """`report(what, done, total)` redraws one line at most 5 times a second; `done()` clears it."""

    def __init__(self, enabled: bool = True, stream=None) -> None:  # noqa: ANN001
        self.stream = stream or sys.stderr
        self.on = enabled and self.stream.isatty()
        self.last = 0.0
        self.drawn = False

    def report(self, what: str, done: int, total: int) -> None:
        if not self.on:
            return
        now = time.monotonic()
        if now - self.last < 0.2 and done < total:
            return
        self.last = now
        share = f" {100 * done / total:.0f}%" if total else ""
        self.stream.write(f"\r{what}: {done:,} of {total:,}{share}\x1b[K")
        self.stream.flush()
        self.drawn = True

    def done(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False
