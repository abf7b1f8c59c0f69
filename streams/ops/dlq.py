"""`slipguard dlq list` and `slipguard dlq replay`: what is in the DLQ, and putting it back.

A replay re-publishes chosen dead letters to their source topic with their original key,
timestamp and headers (or a corrected value), and only to the join's own inputs (payments,
orders): a dead letter is just a record on a topic, so anyone who can write to the DLQ
could otherwise have a replay write to the outputs, the changelog or Kafka's internal
topics. Each record is published once: in one
transaction with a marker in the compacted topic `<dlq>.replayed`, keyed by the dead
letter's partition and offset. A replay reads the markers first and skips what was
already published, so one that is interrupted and run again publishes nothing twice.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from schemas import DeadLetter
from streams.kafka import config
from streams.kafka.read import partition_count, read, topic_names
from streams.kafka.topics import not_found
from streams.settings import Settings


class ReplayError(Exception):
    """A replay that cannot be done as asked (one line)."""


@dataclass(frozen=True)
class Letter:
    partition: int
    offset: int
    dead: DeadLetter | None  # None: the DLQ record itself could not be read
    problem: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"


def replayed_topic(s: Settings) -> str:
    return f"{s.dlq_topic}.replayed"


def absent(s: Settings) -> str | None:
    """One line when the DLQ topic is not there (which topics look like slipguard's), else None."""
    try:
        if partition_count(s, s.dlq_topic) is not None:
            return None
    except KafkaException:
        return None  # the broker does not answer: reading says so
    return not_found(s, [s.dlq_topic], topic_names(s))


def read_topic(s: Settings, topic: str) -> Iterator[tuple[int, int, bytes | None, bytes | None]]:
    """Every record of `topic` now, read_committed: (partition, offset, key, value)."""
    for r in read(s, topic):
        yield r.partition, r.offset, r.key, r.value


def letters(s: Settings, *, since: datetime | None = None, reason: str | None = None,
            first: int | None = None, last: int | None = None) -> list[Letter]:
    found = []
    for partition, offset, _key, value in read_topic(s, s.dlq_topic):
        if (first is not None and offset < first) or (last is not None and offset > last):
            continue
        try:
            dead = DeadLetter.decode(value or b"")
        except ValueError as exc:
            found.append(Letter(partition, offset, None, f"not a dead letter: {str(exc).splitlines()[0]}"))
            continue
        if since is not None and dead.failed_at < since:
            continue
        if reason is not None and reason.lower() not in dead.error.lower():
            continue
        found.append(Letter(partition, offset, dead))
    return found


def inputs(s: Settings) -> tuple[str, str]:
    """The only topics a replay writes to: the join's inputs."""
    return s.payments_topic, s.orders_topic


def misdirected(s: Settings, letter: Letter) -> str | None:
    """Why a dead letter must not go back where it says it came from (None: it may)."""
    if letter.dead is None or letter.dead.source_topic in inputs(s):
        return None
    return (f"its source topic {letter.dead.source_topic!r} is not one of the join's inputs "
            f"({', '.join(inputs(s))}); a replay writes only there")


def replayable(letter: Letter) -> str | None:
    """Why a dead letter cannot be put back as it is (None: it can)."""
    d = letter.dead
    if d is None:
        return letter.problem
    if d.value_redacted:
        return "its value was kept without its metadata (SLIPGUARD_MINIMISE_PERSONAL_DATA): give it whole (--file)"
    if d.value_truncated:
        return f"its value was {d.value_size} bytes, only a prefix was kept: give a corrected value (--file)"
    if d.key_truncated:
        return "its key was truncated"
    if any(h.truncated for h in d.headers or []):
        return "a header was truncated"
    if d.headers_dropped:
        return f"{d.headers_dropped} header(s) were left out (too many or too large, or unreadable)"
    return None


def corrections(path: str) -> dict[str, bytes]:
    """A corrected-values file: one JSON object per line, {"dlq": "<partition>:<offset>",
    "value": <the corrected message as JSON>} -> ref -> bytes."""
    fixed = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                fixed[str(item["dlq"])] = json.dumps(item["value"], separators=(",", ":"), ensure_ascii=False).encode()
            except (ValueError, KeyError, TypeError) as exc:
                raise ReplayError(f'{path} line {n}: expected {{"dlq": "P:O", "value": {{...}}}} ({exc})') from None
    return fixed


def _done(s: Settings) -> set[str]:  # an absent marker topic reads as empty
    return {key.decode() for _p, _o, key, value in read_topic(s, replayed_topic(s)) if key and value}


def _ensure_marker_topic(s: Settings) -> None:
    admin = AdminClient(config.admin(s))
    name = replayed_topic(s)
    if name in admin.list_topics(timeout=10).topics:
        return
    future = admin.create_topics([NewTopic(name, 1, s.replication_factor, config={"cleanup.policy": "compact"})])[name]
    try:
        future.result()
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise ReplayError(f"cannot create {name}: {exc.args[0].str()}") from None


def replay(s: Settings, chosen: list[Letter], fixed: dict[str, bytes], *, dry_run: bool = False) -> list[str]:
    """Re-publish `chosen` once each; returns one line per dead letter saying what happened.
    A dry run only reads (it does not even create the marker topic)."""
    if not dry_run:
        _ensure_marker_topic(s)
    done = _done(s)
    lines: list[str] = []
    todo = []
    for letter in chosen:
        if letter.ref in done:
            lines.append(f"skipped  {letter.ref}: replayed before")
            continue
        why = misdirected(s, letter) or (None if letter.ref in fixed else replayable(letter))
        if why is not None:
            lines.append(f"skipped  {letter.ref}: {why}")
            continue
        todo.append(letter)
    if dry_run:
        return lines + [f"would replay {x.ref} to {x.dead.source_topic}" for x in todo if x.dead]
    if not todo:
        return lines
    producer = Producer(config.producer(s, transactional_id=f"{s.dlq_topic}-replay"))
    producer.init_transactions(30)
    for letter in todo:
        d = letter.dead
        assert d is not None
        value = fixed.get(letter.ref) or (base64.b64decode(d.value_b64) if d.value_b64 is not None else None)
        key = base64.b64decode(d.key_b64) if d.key_b64 is not None else None
        headers: list[tuple[str, str | bytes | None]] = [
            (h.key, base64.b64decode(h.value_b64) if h.value_b64 is not None else None) for h in d.headers or []]
        headers.append(("slipguard-replay-of", f"{s.dlq_topic}:{letter.ref}".encode()))
        producer.begin_transaction()
        producer.produce(d.source_topic, value, key, headers=headers,
                         timestamp=0 if d.timestamp_ms is None else d.timestamp_ms)  # 0: the producer's clock
        producer.produce(replayed_topic(s), b"1", letter.ref.encode())
        try:
            producer.commit_transaction(30)
        except KafkaException as exc:
            producer.abort_transaction(30)
            raise ReplayError(f"replaying {letter.ref} failed ({exc.args[0].str()}); nothing of it was published; "
                              "run the same replay again") from None
        lines.append(f"replayed {letter.ref} to {d.source_topic} (key {key!r}, "
                     f"{'corrected value' if letter.ref in fixed else 'original value'})")
    return lines
