"""When an end of partition can be trusted.

The contract recovers a payment by the wall clock only once the join has read the
orders partition to its end. librdkafka signals an end (PARTITION_EOF) once per end
reached, and the join remembers it until the next record. An end seen before the
partition's leader went away is stale: while the broker is away producers cannot write,
and when it is back they write what they buffered, so orders are waiting that the join
has not fetched. Trusting the stale end recovered payments whose orders came in right
behind them (1,600-1,900 false recoveries of 24,000 with at_least_once under KIP-848
across a broker kill -9, where neither an aborted transaction nor a rebalance made the
join read the partitions again).

So an end counts only when it was seen (or confirmed by asking the leader for the
partition's end) after the last time a partition's leader was away, and not before
SETTLE_S after the leaders are all back: the producers, which retry their connections
with a backoff of up to librdkafka's reconnect.backoff.max.ms (10 s by default), have
then had time to deliver what they buffered. Clock recoveries wait that long after an
outage; nothing is recovered early.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable

SETTLE_S = 10.0
log = logging.getLogger("slipguard.join")
# A leader that has not answered for this long while a request waits for it is away too
# (frozen, a long GC pause, a network partition: its connection stays up). It answers a
# fetch within fetch.wait.max.ms (500 ms) and the fetcher idles at most 1 s in between.
UNANSWERED_S = 3.0


class EndWatch:
    """Follows librdkafka's statistics: `epoch` changes whenever a leader of an assigned
    partition is away (unknown, not connected, its connection dropped since the last
    statistics, or a request unanswered for UNANSWERED_S); an end carries the epoch it
    was seen in."""

    def __init__(self, topics: Iterable[str], *, settle_s: float = SETTLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.topics = tuple(topics)
        self.settle_s, self.clock = settle_s, clock
        self.epoch = 0
        self.trusted_from = -math.inf  # monotonic: ends count from then on
        self._disconnects: dict[int, int] = {}

    def observe(self, stats: dict) -> None:
        """One statistics report (the parsed JSON of librdkafka's stats_cb)."""
        brokers = {b.get("nodeid", -1): b for b in stats.get("brokers", {}).values() if b.get("nodeid", -1) >= 0}
        away = ""
        leaders = set()
        for topic in self.topics:
            for part in stats.get("topics", {}).get(topic, {}).get("partitions", {}).values():
                if part.get("partition", -1) < 0 or not part.get("desired"):
                    continue  # the unassigned-partition placeholder, or not ours
                leader = part.get("broker", -1)
                leaders.add(leader)
                if brokers.get(leader, {}).get("state") != "UP":
                    away = f"no leader connected for {topic} [{part.get('partition')}]"
        for nodeid, broker in brokers.items():
            dropped = broker.get("disconnects", 0)
            if nodeid in leaders:
                if dropped > self._disconnects.get(nodeid, dropped):
                    away = f"broker {nodeid} disconnected"  # dropped and back between two reports
                # A request waits, nothing was sent for UNANSWERED_S and nothing received:
                # the waiting request is at least that old. (rxidle alone misleads: a
                # fetch sent after the fetcher idled looks unanswered at once.)
                idle = min(broker.get("rxidle", -1), broker.get("txidle", -1))
                if broker.get("waitresp_cnt", 0) > 0 and idle > UNANSWERED_S * 1e6:
                    away = f"broker {nodeid} has not answered for {idle / 1e6:.1f}s"  # connected
            self._disconnects[nodeid] = dropped
        if away:
            if self.trusted_from != math.inf:
                log.warning("%s: no end of partition counts (no recovery by the clock) until %.0fs after it is "
                            "back", away, self.settle_s)
            self.epoch += 1
            self.trusted_from = math.inf
        elif self.trusted_from == math.inf:
            self.trusted_from = self.clock() + self.settle_s

    @property
    def settled(self) -> bool:
        return self.clock() >= self.trusted_from

    def trusts(self, seen_in: int) -> bool:
        """Whether an end seen (or confirmed) in epoch `seen_in` counts now."""
        return seen_in == self.epoch and self.clock() >= self.trusted_from
