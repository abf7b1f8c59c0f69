"""How far each input partition of a pair has been read: what its records confirm, where
its end is, and whether that end can be trusted. The contract's progress comes from here.

**Progress by records** (`Confirmed`): the largest time two consecutive valid records
of the partition both reach (for each, the smaller of its time and the previous one's;
the first record read confirms nothing), so one record from a fast clock moves nothing.
The core (core.py) caps it at the wall clock, or takes the wall clock itself once the
partition is read to its end.

**Read to its end** (`PartitionEnd`): fetched to the end (librdkafka's end-of-partition
event, which follows the partition's records in a batch), nothing held back by the
merge, and the end seen (or confirmed by asking the leader) in an epoch that counts.

**When an end can be trusted** (`EndWatch`). librdkafka signals an end once per end
reached, and the join remembers it until the next record. An end seen before the
partition's leader went away is stale: while the broker is away producers cannot write,
and when it is back they write what they buffered, so orders are waiting that the join
has not fetched. Trusting the stale end recovered payments whose orders came in right
behind them (1,600-1,900 false recoveries of 24,000 with at_least_once under KIP-848
across a broker kill -9, where neither an aborted transaction nor a rebalance made the
join read the partitions again). So an end counts only when it was seen (or confirmed)
after the last time a partition's leader was away, and not before SETTLE_S after the
leaders are all back: the producers, which retry their connections with a backoff of up
to librdkafka's reconnect.backoff.max.ms (10 s by default), have then had time to
deliver what they buffered. Clock recoveries wait that long after an outage; nothing is
recovered early.

**A leader that moved** between two live brokers (a preferred-leader election after a
broker was slow or restarted, a reassignment) makes the ends seen before stale too, and
no end counts for SETTLE_S: the new leader's high watermark may not be caught up yet
(ListOffsets answers OFFSET_NOT_AVAILABLE meanwhile), so an end it gives can be short of
orders the old leader had acknowledged. Trusting one recovered 5 payments whose orders
had been acknowledged 4 s before, 0.6 s after the controller moved both their orders
partitions (soak-239874, at_least_once, 07:30:14). Nothing was away, so nothing else
said so. An end seen between the move and the next statistics report (up to a second)
still counts until that report comes.

**A loop that stood still** (a commit or a rebalance callback that waited on a dead
coordinator for 20 s, a long pause of the process) makes every end it saw before stale
in the same way, without any leader going away: orders were appended meanwhile that the
join has not fetched, and after the stall its fetch queues may even be refilled from the
broker, so that the first batch brings none of them. Taking the wall clock as progress
then recovered 141 payments whose orders had been in the log for 20 s (the cluster's
group-coordinator kill, exactly_once). So a stall longer than `stall_s(grace)` starts a
new epoch too (`EndWatch.stalled`), after the batch consumed at its end: ends count
again once seen, or confirmed with the leader, after it. No settling time: the leaders
stayed up, and the producers were not held back. A confirmation asked within stall_s
before the consume that ends a stall counts in it (`carry_ends`): the stall lay before
the asking. Without that, a worker whose every step was slower than stall_s (a transaction
commit on a loaded machine: exactly_once, GRACE 1 s, so stall_s 0.5 s) made every
confirmation stale before it was used, and an idle partition's end never counted: its
payments were never recovered by the clock (suspected in a CI run of 57698c3, where an
exactly_once worker recovered nothing in the 65 s after a 6 s SIGSTOP; not reproduced
here, with 8 busy loops beside it).

**A queue that holds more** (a batch that came back full) makes every end seen so far
stale in the same way (`EndWatch.queued`), after that batch. librdkafka prefetches far
ahead of the loop (up to queued.min.messages per partition) and queues an end of
partition behind the records of the fetch that reached it: records fetched after it wait
behind it in the queue, and the loop sees that end seconds after the fetch that gave it.
Catching up after a rebalance, the at_least_once worker took an end of orders 0 at offset
112235 or below (the high watermark of a fetch before 08:45:46.07), consumed after
08:45:49.4, for the partition read to its end, and recovered at 08:45:50.791 25 payments
whose orders (112241..112446, acknowledged 4.2-4.7 s before) were in its queue behind it
(soak-104610). A batch that is not full emptied the queue: an end seen in it has nothing
fetched behind it.

**A confirmation carried over a full batch** (`carry_ends`). While every batch is full
(a fast payments stream, a backlog), each batch made the confirmation asked after the
previous merge stale before it was used, and an idle or dead orders partition never
counted as read to its end: its payments were never recovered by the clock. What a batch
that is not full says, that nothing fetched waits in the queue behind the end, the high
watermark librdkafka caches from each fetch response says per partition: every record
fetched lies below the high watermark of the response that brought it, so when the end
the join consumed last is at that cached value, nothing of the partition waits in the
queue. So a confirmation (the leader's end, asked at a known time, last in a step)
counts in the next step's merge after a full batch too, where the cached high watermark
is exactly the end the join has read to. Only that step (one consume between, as without
it), only across that batch's `queued` or a stall's `stalled` (not an outage or a move),
and no later than `stall_s` after it was asked: an order appended promptly for a payment
due now (its deadline + GRACE passed, GRACE ≥ 2 stall_s) was in the log before the
leader was asked. The cached value alone says nothing of freshness: librdkafka stops
fetching every partition while the queue they share is over queued.min.messages (and for
fetch.queue.backoff.ms after), and a probe (2026-12-07) saw it at an order's offset for
1.4 s after the order was committed. It is the high watermark, not the last stable
offset: while a transaction is open on the partition it is past any end, and nothing is
carried.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import OFFSET_END, TopicPartition

SETTLE_S = 10.0
NO_EPOCH = -2  # stale_ends(NO_EPOCH): every end fetched to, whatever epoch it was seen in (confirm_ends(every=True))
STALL_SAID_S = 2.0  # a stall at least this long is logged at INFO (EndWatch.stalled)
HELD_LOG_S = 30.0  # while no end counts for an away leader: one line this often, with the reason
log = logging.getLogger("slipguard.join")
# A leader that has not answered for this long while a request waits for it is away too
# (frozen, a long GC pause, a network partition: its connection stays up). It answers a
# fetch within fetch.wait.max.ms (500 ms) and the fetcher idles at most 1 s in between.
UNANSWERED_S = 3.0


STALL_MIN_S = 0.2  # the shortest stall_s: an idle loop's step alone is consume()'s 50 ms timeout


def stall_s(grace_ms: int) -> float:
    """How long the loop may stand still before the ends it saw are stale: an order
    appended promptly is fetched well within this, and a payment is recovered only once
    the clock is GRACE past its deadline, so a shorter stall cannot hide its order. Never
    below STALL_MIN_S: with GRACE under 0.4 s (the settings allow 0) every step, even an
    idle one, was a stall, no end counted and an idle partition's payments were never
    recovered by the clock (found by review, 2026-12-07). Such a GRACE leaves no margin for
    a fetch's own latency anyway: an order appended at its deadline may be recovered."""
    return max(STALL_MIN_S, min(1.0, grace_ms / 2000))


def parse_stats(stats_json: str) -> dict[str, Any]:
    """librdkafka's statistics, keeping every broker handle. A report may list two under
    one name (and one node id): librdkafka (2.10 and later) decommissions a broker that
    leaves the metadata, and the handle stays in its list of brokers, the one statistics
    walk, until its thread ends, while a new handle for the same node may be made. A plain
    json.loads keeps the last of a repeated key. Suspected, not shown: soak-88769's
    exactly_once/w2 logged its partitions' leader as "broker 1: INIT" for 154 s after a
    rolling restart and a lost assignment, counting no end of partition (no recovery by
    the clock), and the cut-off test's at_least_once worker in CI logged "no leader
    connected" and never recovered its last payments; a probe killing and restarting a
    broker under a consumer (2026-12-07) never saw a node listed twice. Repeated keys get
    a "#n" suffix; EndWatch says once when a node is listed more than once."""
    def keep_all(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            name, n = key, 1
            while name in out:
                n += 1
                name = f"{key}#{n}"
            out[name] = value
        return out

    parsed: dict[str, Any] = json.loads(stats_json, object_pairs_hook=keep_all)
    return parsed


def real_brokers(stats: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """node id -> the handle that speaks for that broker: bootstrap and logical handles
    (node id -1) left out, and of several handles of one node the one that is UP (the
    others are leftovers: see parse_stats), else the last listed."""
    out: dict[int, dict[str, Any]] = {}
    for b in stats.get("brokers", {}).values():
        nodeid = b.get("nodeid", -1)
        if nodeid < 0:
            continue
        if nodeid not in out or out[nodeid].get("state") != "UP":
            out[nodeid] = b
    return out


def handles_said(stats: dict[str, Any], topic: str, part: dict[str, Any], received: int | None) -> str:
    """What a report says of a partition whose leader is not UP, to tell the causes apart:
    every handle of the node it is fetched from (a handle lists the partitions delegated to
    it: `toppars`), and whether the partition is being fetched (`received`: its records
    fetched since the last report, None if not known).

    librdkafka connects to a broker only when it has something to send it (sparse
    connections, the default): a handle left with nothing to fetch (its partitions paused,
    as the join pauses a partition while restoring its state) stays INIT, with no connect
    or disconnect, until one is fetchable again. A leader that went away shows its
    disconnect (`disconnects`, or the handle gone and the partition fetched from -1); a
    handle of the node that is UP beside an INIT one (see parse_stats) shows that too."""
    p, nodeid = part.get("partition"), part.get("broker", -1)
    name = f"{topic}-{p}"
    handles = [b for b in stats.get("brokers", {}).values()
               if isinstance(nodeid, int) and nodeid >= 0 and b.get("nodeid", -1) == nodeid]
    said = "; ".join(
        f"{b.get('name', '?')} {b.get('state', '?')} for {(b.get('stateage') or 0) / 1e6:.0f}s "
        f"(connects {b.get('connects', '?')}, disconnects {b.get('disconnects', '?')}, "
        f"requests waiting {b.get('waitresp_cnt', '?')}{', holds it' if name in (b.get('toppars') or {}) else ''})"
        for b in handles) or "none listed"
    fetched = "not known" if received is None else str(received)
    idle = (received == 0 and part.get("fetchq_cnt", 0) == 0 and
            any(b.get("state") == "INIT" and name in (b.get("toppars") or {}) for b in handles))
    return (f"{topic} [{p}]: the handles of broker {nodeid}: {said}; the partition: fetch_state "
            f"{part.get('fetch_state', '?')}, next_offset {part.get('next_offset', '?')}, fetchq "
            f"{part.get('fetchq_cnt', '?')}, records fetched since the last report {fetched}"
            + (" (nothing to fetch from it, so no connection made: a paused partition's leader, e.g. while its "
               "state is restored, stays INIT)" if idle else ""))


class Confirmed:
    """A partition's progress by its records (see the module docstring)."""

    __slots__ = ("last", "time")

    def __init__(self) -> None:
        self.time = -1  # the largest time two consecutive valid records both reach
        self.last = -1  # the last valid record's time

    def note(self, ts: int) -> None:
        """A valid record at `ts`, after the ones noted before."""
        last, self.last = self.last, ts
        if last > self.time and ts > self.time:
            self.time = last if last < ts else ts

    def at(self, now_ms: int, at_end: bool) -> int:
        """The progress: never past the wall clock, the wall clock itself once read to the end."""
        return now_ms if at_end else min(self.time, now_ms)


@dataclass
class PartitionEnd:
    """One input partition of a pair: how far it is fetched and whether it is read to its end."""

    fetched_to: int = 0  # the next offset fetched
    fetch_end: bool = False  # fetched to the partition's end
    end_epoch: int = -1  # EndWatch.epoch the end was seen (or confirmed) in
    at_end: bool = False  # read to its end, as of the last merge

    def record(self, offset: int) -> None:
        self.fetched_to, self.fetch_end = offset + 1, False

    def eof(self, offset: int, epoch: int) -> None:
        """librdkafka's end-of-partition event at `offset`: an earlier one (from before the
        records fetched since) says nothing."""
        if self.fetched_to <= offset:
            self.fetch_end, self.end_epoch = True, epoch
            self.fetched_to = offset  # past transaction markers

    def update(self, held: bool, trusts: Callable[[int], bool]) -> bool:
        """Whether it is read to its end now: fetched to it, nothing held back, the end trusted."""
        self.at_end = self.fetch_end and not held and trusts(self.end_epoch)
        return self.at_end

    def stale(self, epoch: int) -> bool:
        """An end seen before the current epoch: to be confirmed with the leader."""
        return self.fetch_end and self.end_epoch != epoch

    def confirm(self, end_offset: int, epoch: int) -> bool:
        """The leader says the partition ends at `end_offset` (for a read_committed client,
        the last stable offset): nothing is unread if fetched to it."""
        if self.fetch_end and self.fetched_to >= end_offset:
            self.end_epoch = epoch
            return True
        return False


@dataclass(frozen=True)
class Confirmation:
    """Ends the leaders confirmed (confirm_ends): in `epoch`, asked at `asked_at` (EndWatch's
    clock), each (partition, side, the end the leader gave)."""

    epoch: int
    asked_at: float
    ends: tuple[tuple[int, int, int], ...]


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
        self._leaders: dict[tuple[str, int], int] = {}  # (topic, partition) -> its leader at the last report
        # The last new epoch came from a full batch (queued), not from an outage, a move or a
        # stall: confirming its ends is routine and not logged (a backlog does it every second).
        self.routine = False
        # What began the current epoch: "queued" or "stalled" (carry_ends may carry the
        # confirmation asked just before into it), else "start", "away" or "moved".
        self.cause = "start"
        # An outage or a move was said (no end counts until ...): the next confirmation is
        # said too, even if a routine epoch (a full batch, a short stall) came between.
        self.owed: str | None = None
        self._listed_twice: set[int] = set()  # node ids seen with more than one handle (said once each)
        self.away_since: float | None = None  # monotonic: reports have said a leader is away since then
        self._held_logged = 0.0  # monotonic: the last "still away" line
        self._received: dict[tuple[str, int], int] = {}  # (topic, partition) -> its rxmsgs at the last report
        # The ends the leaders confirmed last (confirm_ends), for carry_ends: the next step only.
        self.confirmed: Confirmation | None = None

    def observe(self, stats: dict[str, Any]) -> None:
        """One statistics report (the parsed JSON of librdkafka's stats_cb, see parse_stats)."""
        brokers = real_brokers(stats)
        listed = Counter(b.get("nodeid", -1) for b in stats.get("brokers", {}).values())
        for nodeid in brokers:
            if listed[nodeid] > 1 and nodeid not in self._listed_twice:
                self._listed_twice.add(nodeid)
                states = [b.get("state") for b in stats["brokers"].values() if b.get("nodeid") == nodeid]
                log.info("broker %d is listed %d times in the client's statistics (states %s): counted up if one "
                         "is UP", nodeid, listed[nodeid], ", ".join(map(str, states)))
        away = moved = why = ""
        leaders = set()
        received_now: dict[tuple[str, int], int] = {}
        for topic in self.topics:
            for part in stats.get("topics", {}).get(topic, {}).get("partitions", {}).values():
                if part.get("partition", -1) < 0 or not part.get("desired"):
                    continue  # the unassigned-partition placeholder, or not ours
                leader = part.get("broker", -1)
                leaders.add(leader)
                received, earlier = part.get("rxmsgs"), self._received.get((topic, part["partition"]))
                if isinstance(received, int):
                    received_now[(topic, part["partition"])] = received
                state = brokers.get(leader, {}).get("state")
                if state != "UP":
                    away = (f"no leader connected for {topic} [{part.get('partition')}] "
                            f"(fetched from broker {leader}: {state or 'unknown'}; leader {part.get('leader', '?')})")
                    why = handles_said(stats, topic, part, received - earlier
                                       if isinstance(received, int) and earlier is not None else None)
                # A leader that moved between two live brokers (a preferred-leader election,
                # a reassignment): its end may be the new leader's, whose high watermark is
                # not caught up yet (ListOffsets says OFFSET_NOT_AVAILABLE meanwhile), short
                # of records acknowledged by the old one.
                key = (topic, part["partition"])
                known = part.get("leader", leader)
                if isinstance(known, int) and known >= 0:
                    before = self._leaders.get(key, known)
                    if before != known:
                        moved = f"the leader of {topic} [{key[1]}] moved from broker {before} to {known}"
                    self._leaders[key] = known
        self._received = received_now
        for nodeid, broker in brokers.items():
            dropped = broker.get("disconnects", 0)
            if nodeid in leaders:
                if dropped > self._disconnects.get(nodeid, dropped):
                    away, why = f"broker {nodeid} disconnected", ""  # dropped and back between two reports
                # A request waits, nothing was sent for UNANSWERED_S and nothing received:
                # the waiting request is at least that old. (rxidle alone misleads: a
                # fetch sent after the fetcher idled looks unanswered at once.)
                idle = min(broker.get("rxidle", -1), broker.get("txidle", -1))
                if broker.get("waitresp_cnt", 0) > 0 and idle > UNANSWERED_S * 1e6:
                    away, why = f"broker {nodeid} has not answered for {idle / 1e6:.1f}s", ""  # connected
            self._disconnects[nodeid] = dropped
        if away:
            now = self.clock()
            if self.trusted_from != math.inf:
                log.warning("%s: no end of partition counts (no recovery by the clock) until %.0fs after it is "
                            "back", away, self.settle_s)
                self.away_since = self._held_logged = now
                if why:
                    log.info("%s", why)
            elif self.away_since is not None and now - self._held_logged >= HELD_LOG_S:
                # Recoveries by the clock wait for this: an idle partition's payments stay
                # pending, and an operator should know why (not only once, at the start).
                self._held_logged = now
                log.warning("still %s, for %.0fs: no end of partition counts (no recovery by the clock)", away,
                            now - self.away_since)
                if why:
                    log.info("%s", why)
            self.epoch += 1
            self.routine, self.cause, self.owed = False, "away", "the broker was away"
            self.trusted_from = math.inf
        elif self.trusted_from == math.inf:
            self.away_since = None
            self.trusted_from = self.clock() + self.settle_s
        elif moved:
            log.warning("%s: no end of partition counts (no recovery by the clock) for %.0fs", moved, self.settle_s)
            self.epoch += 1
            self.routine, self.cause, self.owed = False, "moved", "a leader moved"
            self.trusted_from = max(self.trusted_from, self.clock() + self.settle_s)

    def stalled(self, seconds: float) -> None:
        """The loop stood still for `seconds` (see the module docstring): every end seen
        so far is stale, and counts only once confirmed. Said at INFO from STALL_SAID_S on
        (a pause, a coordinator that did not answer); a step merely slower than stall_s (a
        commit on a loaded machine) is routine, said at DEBUG, as are its confirmations."""
        said = seconds >= STALL_SAID_S
        log.log(logging.INFO if said else logging.DEBUG,
                "the join's loop stood still for %.1fs: ends of partition seen before count once confirmed again",
                seconds)
        self.epoch += 1
        self.routine, self.cause = not said, "stalled"

    def queued(self) -> None:
        """A batch came back full: the client's queue may hold records behind every end seen
        so far (see the module docstring). They count only once seen again in a batch that
        emptied the queue, or confirmed with the leader. Quiet: a backlog does this on every
        batch (and its confirmations are not logged: `routine`)."""
        self.epoch += 1
        self.routine, self.cause = True, "queued"

    def take_confirmed(self) -> Confirmation | None:
        """The ends confirmed since the last call (by the previous step): carry_ends may
        use them in this step, and in no later one."""
        confirmed, self.confirmed = self.confirmed, None
        return confirmed

    @property
    def settled(self) -> bool:
        return self.clock() >= self.trusted_from

    def trusts(self, seen_in: int) -> bool:
        """Whether an end seen (or confirmed) in epoch `seen_in` counts now."""
        return seen_in == self.epoch and self.clock() >= self.trusted_from


class Ends(Protocol):
    """What confirm_ends asks of the record path (pipeline.Pipeline, native.NativePipeline)."""

    def stale_ends(self, epoch: int) -> Sequence[tuple[int, int]]: ...

    def confirm_end(self, partition: int, side: Any, end_offset: int, epoch: int) -> bool: ...


def confirm_ends(path: Ends, topics: Sequence[str], watch: EndWatch,
                 ask: Callable[[list[TopicPartition]], list[TopicPartition] | None], *, every: bool = False) -> int:
    """Ask the leaders (`ask`: ListOffsets, with read_committed the last stable offset)
    for the end of each partition whose end was seen before the current epoch (`every`:
    of each partition fetched to its end, as after a stall, when the next consume is
    likely to end one too: an end carried into this epoch, or seen in it, would be stale
    then with nothing to carry), and trust it where nothing is unread; where something
    is, its records are on their way and their own end will follow. Returns how many were
    confirmed."""
    epoch = watch.epoch
    stale = [TopicPartition(topics[side], p, OFFSET_END) for p, side in path.stale_ends(NO_EPOCH if every else epoch)]
    if not stale:
        return 0
    asked_at = watch.clock()
    ends = ask(stale)
    if ends is None or epoch != watch.epoch:
        return 0
    sides = {topic: side for side, topic in enumerate(topics)}
    confirmed = tuple((tp.partition, sides[tp.topic], tp.offset) for tp in ends
                      if tp.error is None and tp.offset >= 0
                      and path.confirm_end(tp.partition, sides[tp.topic], tp.offset, epoch))
    if confirmed:
        watch.confirmed = Confirmation(epoch, asked_at, confirmed)
        if not watch.routine or watch.owed:
            log.info("after %s: %d of %d ends of partition confirmed with the leaders",
                     watch.owed or _CAUSES.get(watch.cause, "a start"), len(confirmed), len(stale))
            watch.owed = None
    return len(confirmed)


_CAUSES = {"away": "the broker was away", "moved": "a leader moved", "stalled": "the loop stood still",
           "queued": "a full batch"}


def carry_ends(path: Ends, topics: Sequence[str], watch: EndWatch, confirmed: Confirmation | None,
               high: Callable[[str, int], int | None], limit_s: float, *, full: bool) -> int:
    """Right after a full batch's `queued` or a stall's `stalled` (see the module docstring):
    the ends the leaders confirmed in the epoch it ended count in the new one, if the
    leader was asked no more than `limit_s` (stall_s) ago: then an order appended promptly
    for a payment due now was in the log before it was asked, and below the end it gave,
    which the join had read to (PartitionEnd.confirm: still at an end, fetched to it). A
    stall that lay before the asking (a commit slower than stall_s: the worker confirms
    after its commit) does not discard it; one after it (a pause between the asking and
    this consume) does, by the time. After a full batch (`full`) only where nothing fetched
    of the partition waits in the queue, that is where librdkafka's cached high watermark
    (`high`: read.cached_high) is the end the join has read to; not where the cached value
    is missing, failed (< 0), or behind the leader's end (a fetch failed, or a high
    watermark that went back: a new leader's). At most one cached read per confirmed end.
    Not when anything else began an epoch since (an outage, a move). Returns how many were
    carried."""
    if confirmed is None or confirmed.epoch != watch.epoch - 1 or watch.cause not in ("queued", "stalled") \
            or watch.clock() - confirmed.asked_at > limit_s:
        return 0
    carried = 0
    for partition, side, end_offset in confirmed.ends:
        end: int | None = end_offset
        if full:
            cached = high(topics[side], partition)
            end = cached if cached is not None and cached >= end_offset else None
        if end is not None and path.confirm_end(partition, side, end, watch.epoch):
            carried += 1
    return carried
