"""The restorer's bookkeeping of restores under way (no broker needed: nothing is read)."""

from __future__ import annotations

from streams.join.core import JoinParams
from streams.join.restore import Restorer
from streams.settings import load_settings


def _restorer() -> Restorer:
    s = load_settings(bootstrap_servers="127.0.0.1:1")  # never reached: nothing here reads
    return Restorer(s, JoinParams(60_000, 5_000, 3_600_000), lambda: 0, lambda: False)


def test_partitions_revoked_while_restoring_are_all_cancelled() -> None:
    r = _restorer()
    try:
        r.start([0, 1, 2, 3])
        r.cancel({0, 1, 2})
        assert sorted(r.jobs) == [3] and r.busy
        assert [tp.partition for tp in r.consumer.assignment()] == [3]
        r.cancel({3})
        assert not r.busy and r.consumer.assignment() == []
    finally:
        r.close()


def test_a_partition_already_being_restored_is_not_started_again() -> None:
    r = _restorer()
    try:
        r.start([1])
        r.jobs[1].position = 42  # read so far
        r.start([1, 2])
        assert r.jobs[1].position == 42 and sorted(r.jobs) == [1, 2]
    finally:
        r.close()
