"""Whether the cluster offers KIP-848: every broker that answers must (pure: the answers
are given; tests/integration/test_group_protocol.py asks real brokers)."""

from __future__ import annotations

import pytest

from streams.kafka import versions
from streams.settings import Settings


@pytest.mark.parametrize(("answers", "offered"), [
    ({"a:1": True, "b:2": True}, True),
    ({"a:1": True, "b:2": False}, False),  # a rolling upgrade from Kafka 3 not done: classic
    ({"a:1": None, "b:2": True}, True),  # a broker that cannot tell does not decide
    ({"a:1": None}, None),  # none answered: try the consumer protocol
])
def test_the_consumer_protocol_only_where_every_broker_that_answers_offers_it(monkeypatch, answers, offered) -> None:
    monkeypatch.setattr(versions, "_brokers", lambda s, timeout: list(answers))
    monkeypatch.setattr(versions, "_offers", lambda s, server, timeout: answers[server])
    assert versions.offers_kip848(Settings(), timeout=1) is offered
