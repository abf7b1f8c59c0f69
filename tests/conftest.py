"""Shared by every test."""

from __future__ import annotations

import logging

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> None:
    """`make mutation` runs mutmut 3.7 (3.8 needs click>=8.4.2, faust-streaming needs
    click<8.4), which reads a test's `_nodeid`; pytest 9 keeps it as `nodeid` only."""
    if not hasattr(item, "_nodeid"):
        item._nodeid = item.nodeid  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def root_logging():
    """setup_logging replaces the root logger's handlers, bound to the stderr pytest captures
    for that test and closes after it: put them back, or later tests log to a closed file."""
    from streams.ops import logs

    root = logging.getLogger()
    saved = root.handlers[:], root.level, logs._SECRETS[:]
    yield
    root.handlers[:], logs._SECRETS[:] = saved[0], saved[2]
    root.setLevel(saved[1])
