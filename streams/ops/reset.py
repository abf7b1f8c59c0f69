"""`slipguard reset`: replay the join from a time, with its state made consistent.

The join's state (its changelog) belongs to the input offsets its group committed.
Rewinding the inputs alone would replay with state from the future (stale pending
payments, recoveries remembered twice). So, like Kafka Streams' application reset tool,
a reset empties the changelog (a tombstone for every live key) and sets the group's input
offsets; the join then rebuilds its state by reading the inputs again.

To re-derive exactly what it derived from time T on, the join must first see what it
remembered at T: payments and orders from T - (ORDER_TIMEOUT + GRACE) that were still
waiting, and recoveries from T - (LATE_HORIZON + ORDER_TIMEOUT + GRACE) whose late order
may come after T. So the inputs go back to T minus that window. Recoveries derived again
carry the same recovery_id (a function of the payment), so the writer's table does not
change; subscribers see those records again and deduplicate by recovery_id, as the
contract asks of them anyway.

Refused while the group has active members: checked by committing the group's current
offsets unchanged as a non-member, which the coordinator refuses while the group has
members (no admin API: librdkafka's DescribeConsumerGroups can abort the process on a
coordinator timeout, librdkafka issue 4605).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streams.kafka import config
from streams.kafka.groups import group_session_timeout_s
from streams.kafka.read import Progress, read
from streams.settings import Settings


class ResetError(Exception):
    """The reset cannot be done as asked; one line says why."""


@dataclass
class Move:
    topic: str
    partition: int
    current: int | None  # None: the group committed nothing there
    target: int


@dataclass
class Plan:
    group: str
    replay_from_ms: int | None  # None: from the earliest record
    window_ms: int
    moves: list[Move] = field(default_factory=list)
    live_keys: list[tuple[int, bytes]] = field(default_factory=list)  # (changelog partition, key)

    def describe(self) -> list[str]:
        lines = []
        if self.replay_from_ms is None:
            lines.append(f"group {self.group}: inputs from their earliest records")
        else:
            lines.append(f"group {self.group}: inputs from {self.window_ms / 1000:.0f} s before the time given "
                         "(what the join must remember to derive the same outputs from it on)")
        for m in self.moves:
            was = "nothing committed" if m.current is None else f"{m.current}"
            lines.append(f"  {m.topic}[{m.partition}]: {was} -> {m.target}")
        lines.append(f"  changelog: {len(self.live_keys)} live entries emptied (tombstones)")
        return lines


def window_ms(s: Settings) -> int:
    return s.late_horizon + s.order_timeout + s.grace


def make_plan(s: Settings, group: str, to_ms: int | None, progress: Progress | None = None) -> Plan:
    if group != s.join_group:
        raise ResetError(f"{group} is not this join's group ({s.join_group}); give the settings of that join")
    plan = Plan(group, to_ms, window_ms(s))
    c = Consumer(config.consumer(s, group, **{"enable.auto.commit": False}))
    try:
        tps = []
        for topic in (s.payments_topic, s.orders_topic):
            meta = c.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                raise ResetError(f"topic {topic} not found on {s.bootstrap_servers}")
            tps += [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        committed = {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=30)}
        if to_ms is None:
            targets = {(tp.topic, tp.partition): c.get_watermark_offsets(tp, timeout=10)[0] for tp in tps}
        else:
            since = to_ms - plan.window_ms
            found = c.offsets_for_times([TopicPartition(tp.topic, tp.partition, since) for tp in tps], timeout=30)
            targets = {}
            for tp in found:
                end = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)[1]
                targets[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else end
    except KafkaException as exc:
        raise ResetError(f"cannot read the group's offsets: {exc.args[0].str()}") from None
    finally:
        c.close()
    for (topic, p), target in sorted(targets.items()):
        current = committed.get((topic, p))
        plan.moves.append(Move(topic, p, current if current is not None and current >= 0 else None, target))
    latest: dict[tuple[int, bytes], bool] = {}
    for r in read(s, s.changelog_topic, progress=progress):
        if r.key is not None:
            latest[(r.partition, r.key)] = r.value is not None
    plan.live_keys = sorted(k for k, live in latest.items() if live)
    return plan


def check_no_members(s: Settings, group: str, moves: list[Move], *,
                     say: Callable[[str], object] = lambda line: None) -> None:
    """Commit the group's current offsets unchanged, as a non-member: refused while the
    group has members. A static member (KIP-848 with SLIPGUARD_INSTANCE_ID) that stopped
    cleanly stays a member until its session expires, so a refusal is asked again for up
    to the group's session timeout (plus 5 s) before it counts."""
    same = [TopicPartition(m.topic, m.partition, m.current) for m in moves if m.current is not None]
    if not same:
        return  # nothing committed yet: nothing a member could be running from either
    deadline = None
    while True:
        refused = _members_refuse(s, group, same)
        if refused is None:
            return
        now = time.monotonic()
        if deadline is None:
            session_s = group_session_timeout_s(s, group)
            deadline = now + session_s + 5
            say(f"group {group} still has members; a stopped static member stays one until its session expires "
                f"({session_s:g}s): asking again for up to {session_s + 5:g}s")
        if now >= deadline:
            raise ResetError(f"group {group} has active members: stop every join worker first "
                             f"(the coordinator said {refused})")
        time.sleep(1.0)


def _members_refuse(s: Settings, group: str, same: list[TopicPartition]) -> str | None:
    """None if a non-member may commit to the group; else the coordinator's refusal."""
    c = Consumer(config.consumer(s, group, **{"enable.auto.commit": False}))
    try:
        c.commit(offsets=same, asynchronous=False)
        return None
    except KafkaException as exc:
        code = exc.args[0].code()
        if code in (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS,
                    KafkaError.STALE_MEMBER_EPOCH, KafkaError.FENCED_MEMBER_EPOCH):
            return exc.args[0].name()
        raise ResetError(f"cannot check the group's members: {exc.args[0].str()}") from None
    finally:
        c.close()


def execute(s: Settings, plan: Plan, progress: Progress | None = None) -> list[str]:
    """Empty the changelog, then move the offsets. Interrupted, it is run again as it was:
    both steps are idempotent; start no join worker in between."""
    check_no_members(s, plan.group, plan.moves)
    failed: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failed.append(err.str())

    p = Producer(config.producer(s, on_delivery=delivered))
    for n, (partition, key) in enumerate(plan.live_keys, 1):
        p.produce(s.changelog_topic, None, key, partition=partition)
        p.poll(0)
        if progress is not None and n % 1000 == 0:
            progress("changelog tombstones", n, len(plan.live_keys))
    left = p.flush(60)
    if failed or left:
        raise ResetError(f"could not empty the changelog ({failed[0] if failed else f'{left} undelivered'}); "
                         "nothing else was changed: run the command again")
    offsets = [TopicPartition(m.topic, m.partition, m.target if m.target >= 0 else OFFSET_BEGINNING)
               for m in plan.moves]
    c = Consumer(config.consumer(s, plan.group, **{"enable.auto.commit": False}))
    try:
        c.commit(offsets=offsets, asynchronous=False)
    except KafkaException as exc:
        raise ResetError(f"the changelog was emptied but the offsets were not set ({exc.args[0].str()}); run the "
                         "command again before starting any join worker") from None
    finally:
        c.close()
    return [f"emptied {len(plan.live_keys)} changelog entries",
            f"set {len(plan.moves)} input offsets of group {plan.group}",
            "start the join workers: they replay from there"]

