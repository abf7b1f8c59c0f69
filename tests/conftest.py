"""Shared by every test."""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> None:
    """`make mutation` runs mutmut 3.7 (3.8 needs click>=8.4.2, faust-streaming needs
    click<8.4), which reads a test's `_nodeid`; pytest 9 keeps it as `nodeid` only."""
    if not hasattr(item, "_nodeid"):
        item._nodeid = item.nodeid  # type: ignore[attr-defined]
