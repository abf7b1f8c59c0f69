"""State restore on the real broker: a new owner must see all the state the old owner committed."""

from __future__ import annotations

import threading
import time

from confluent_kafka import Producer

from schemas import Payment
from streams.join import compact
from streams.join.changelog import encode, encode_key, encode_value, restore_into
from streams.join.core import JoinParams, PartitionJoin
from streams.join.restore import Restorer
from streams.join.state import Store
from streams.kafka import config
from streams.kafka.topics import create_topics
from tests.factories import payment
from tests.integration.conftest import isolated
from tests.join.harness import BASE, Harness, T


def _pending(p: Payment) -> tuple[bytes, bytes]:
    entry = compact.entry(1_000, compact.pack_payment(p))
    return encode_key(Store.PENDING, p.order_id), encode_value(Store.PENDING, entry)


def _restorer(s) -> Restorer:
    params = JoinParams(s.order_timeout, s.grace, s.late_horizon, s.hmac_keys)
    return Restorer(s, params, lambda: int(time.time() * 1000), lambda: False)


def test_restore_reads_past_a_transaction_still_completing(base_settings) -> None:
    """The changelog's last stable offset can stand behind committed state: the previous
    owner's transaction is still being completed (its commit markers not yet written) when
    the new owner restores. Restoring only to the last stable offset would lose that state
    (and recover payments whose orders were already matched). The restore must read to the
    log end as it was when the restore began, waiting for open transactions to resolve."""
    s = isolated(base_settings)
    create_topics(s)
    first, second = payment(payment_id="pay-1", order_id="ord-1"), payment(payment_id="pay-2", order_id="ord-2")
    slow = Producer(config.producer(s, transactional_id=f"{s.join_group}-slow"))
    other = Producer(config.producer(s, transactional_id=f"{s.join_group}-other"))
    slow.init_transactions(30)
    other.init_transactions(30)
    slow.begin_transaction()
    slow.produce(s.changelog_topic, _pending(first)[1], _pending(first)[0], 0)
    slow.flush(10)  # written, its transaction open: the stable end stays at its first record
    other.begin_transaction()
    other.produce(s.changelog_topic, _pending(second)[1], _pending(second)[0], 0)
    other.commit_transaction(30)  # committed, but behind the open transaction

    restorer = _restorer(s)
    committer = threading.Timer(2.0, lambda: slow.commit_transaction(30))
    committer.start()
    try:
        started = time.monotonic()
        restored = restorer.restore_now([0])
        took = time.monotonic() - started
    finally:
        committer.join()
        restorer.close()
    assert restored is not None
    pending = restored[0].pending
    assert sorted(pending) == ["ord-1", "ord-2"], f"restored {sorted(pending)} in {took:.1f}s"
    assert [compact.payment_id_of(compact.part_of(pending[k])) for k in ("ord-1", "ord-2")] == ["pay-1", "pay-2"]


def test_the_changelog_end_is_waited_for_while_its_leader_is_not_known_yet(base_settings) -> None:
    """Right after the topics are created the partitions' leaders may not be known yet
    (CI's benchmark hit NOT_LEADER_FOR_PARTITION); that is a wait, not a crashed worker."""
    s = isolated(base_settings)
    restorer = _restorer(s)
    creator = threading.Timer(1.0, lambda: create_topics(s))
    creator.start()
    try:
        assert restorer._log_ends([0, 1, 2, 3]) == {0: 0, 1: 0, 2: 0, 3: 0}
    finally:
        creator.join()
        restorer.close()


def test_a_restore_holds_the_partitions_live_state_not_every_key_of_its_history(base_settings) -> None:
    """Until the log cleaner has run, a changelog partition holds a record and then a
    tombstone for nearly every payment that was pending across a commit: its history grows
    with time, its live state does not. A restore that kept each key's tombstone held the
    whole history in memory at once (in a 30-minute soak the join workers' RSS rose to
    1.4 GB, their state at 10,000-20,000 entries, restores reading for up to 4 s). Here 20,000
    payments pass through one partition, 50 live at a time: the restore holds 50."""
    s = isolated(base_settings)
    create_topics(s)
    total, live = 20_000, 50
    p = Producer(config.producer(s))
    keys = []
    for i in range(total):
        key, value = _pending(payment(payment_id=f"pay-{i}", order_id=f"ord-{i}"))
        keys.append(key)
        p.produce(s.changelog_topic, value, key, 0)
        if i >= live:
            p.produce(s.changelog_topic, None, keys[i - live], 0)  # matched: its pending entry deleted
        p.poll(0)
    assert p.flush(30) == 0
    held: list[int] = []

    def restore(params, latest, now_ms):
        held.append(len(latest))
        core = PartitionJoin(params)
        restore_into(core, latest, now_ms)
        return core

    params = JoinParams(s.order_timeout, s.grace, s.late_horizon, s.hmac_keys)
    restorer = Restorer(s, params, lambda: int(time.time() * 1000), lambda: False, restore)
    try:
        restored = restorer.restore_now([0])
    finally:
        restorer.close()
    assert restored is not None
    assert sorted(restored[0].pending) == sorted(f"ord-{i}" for i in range(total - live, total))
    assert held == [live], f"the restore held {held} keys for {live} live ones"


def test_a_failed_at_least_once_commit_s_leftover_is_resolved_by_the_restore_under_at_least_once_only(
        base_settings) -> None:
    """A payment recovered in an interval whose at_least_once commit failed in its second
    phase: its recovered entry landed (phase 1), its pending key's tombstone did not
    (checkpoint.phases). The restore on the real broker takes it for handled and names its
    key for the next commit to delete (changelog.drop_handled, restore.Restorer._finish);
    under exactly_once (atomic commits) it is not looked for."""
    h = Harness(timeout=T, grace=1_000, horizon=3_600_000)
    h.pay(BASE, oid="ord-x", pid="pay-x")
    h.take()
    first = [encode(c) for c in h.commit()]  # p:ord-x pending
    h.advance(BASE + T + 2_000, True, True)
    assert h.recovered_ids() == ["pay-x"]
    second = [(k, v) for k, v in map(encode, h.commit()) if v is not None]  # r:ord-x; its p: tombstone lost
    assert [k for k, _ in second] == [b"r:ord-x"]
    for guarantee, resolved in (("at_least_once", True), ("exactly_once", False)):
        s = isolated(base_settings.model_copy(update={"processing_guarantee": guarantee}))
        create_topics(s)
        producer = Producer(config.producer(s))
        for key, value in first + second:
            producer.produce(s.changelog_topic, value, key, 0)
        assert producer.flush(10) == 0
        restorer = _restorer(s)
        try:
            restored = restorer.restore_now([0])
        finally:
            restorer.close()
        assert restored is not None
        assert ("ord-x" in restored[0].pending) is not resolved, guarantee
        assert restorer.handled[0] == ([b"p:ord-x"] if resolved else []), guarantee
