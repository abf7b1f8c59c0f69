"""Progress lines go to a terminal only: piped output stays machine-readable."""

from __future__ import annotations

import io

from streams.cli.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_drawn_on_a_terminal_and_cleared() -> None:
    out = _Tty()
    p = Progress(stream=out)
    p.report("reading payments", 500, 1000)
    p.report("reading payments", 1000, 1000)
    p.done()
    text = out.getvalue()
    assert "reading payments: 500 of 1,000 50%" in text and "1,000 of 1,000 100%" in text
    assert text.endswith("\r\x1b[K")


def test_nothing_when_piped_or_asked_for_json() -> None:
    piped = io.StringIO()
    p = Progress(stream=piped)
    p.report("x", 1, 2)
    p.done()
    tty = _Tty()
    q = Progress(enabled=False, stream=tty)
    q.report("x", 1, 2)
    assert piped.getvalue() == "" and tty.getvalue() == ""
