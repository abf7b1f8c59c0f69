"""One member of a join group reduced to its membership and its commit (the worker's own
Membership and Checkpoint, no record path), driven over stdin by a test: each line a
JSON command `{"offset": n, "changes": [[partition, key, value or null], ...]}` (the
payments partition's next offset to commit, and the state changes to write), answered
with `{"committed": true|false}` on stdout. It says `{"held": [...]}` once assigned.

Run as `python -m tests.integration.member` with the test's SLIPGUARD_* settings; a test
can freeze it (SIGSTOP) between commands, as a network cut freezes a member's traffic."""

from __future__ import annotations

import json
import logging
import sys

from confluent_kafka import Consumer, TopicPartition

from streams.join.checkpoint import Checkpoint
from streams.join.membership import Membership
from streams.settings import load_settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    s = load_settings()
    held: list[TopicPartition] = []

    def on_assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.incremental_assign(partitions) if membership.protocol == "consumer" else consumer.assign(partitions)
        held.extend(partitions)

    membership = Membership(s, lambda _stats: None, lambda: False, lambda: None)
    membership.join(on_assign=on_assign)
    while not held:
        membership.consumer.poll(0.1)
    checkpoint = Checkpoint(s, lambda: membership.consumer, lambda: False)
    checkpoint.bound(membership.window_s)
    checkpoint.remember(membership.consumer.committed(held, timeout=10))
    print(json.dumps({"held": sorted({tp.partition for tp in held})}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        checkpoint.store_offset(s.payments_topic, 0, command["offset"])
        changes = [(p, k.encode(), None if v is None else v.encode()) for p, k, v in command["changes"]]
        print(json.dumps({"committed": checkpoint.commit(lambda changes=changes: changes)}), flush=True)
    checkpoint.close()


if __name__ == "__main__":
    main()
