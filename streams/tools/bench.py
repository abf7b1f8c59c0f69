"""`slipguard bench`: the join's figures on the real local broker, printed, not asserted.

In one run, for each of two workloads (WORKLOADS):
1. pre-produce it (about 1 M events, payments and orders) into fresh topics;
2. the ceiling: a confluent-kafka consumer that only reads and decodes the same records;
3. the join (one in-process worker, the configured guarantee, durable state on) drains
   it, RUNS times per join core (SLIPGUARD_CORE: native and python where native is built),
   each drain in a fresh group, the cores interleaved: medians of events/s, CPU per
   million events, changelog records per input event; peak pending;
and the same join in Kafka Streams (kstreams_peer.py) on the same records, once; then:
4. memory per pending entry, measured on each core alone (tracemalloc; the C allocator);
5. per core, restore: a changelog of 1 M pending payments read back by the restorer;
6. per core, detection latency at a steady live rate: emit time minus deadline, p50, p99.

Workloads: "spread" (orders within +-2 s of their payment, one order id every 3 ms of
event time: most pairs match within one commit) and "delayed" (orders 0-3 s after their
payment at 20 payments per event-time millisecond, 1 % missing: pending payments live
across commits, as real order services answer in seconds).
"""

from __future__ import annotations

import gc
import json
import re
import resource
import statistics
import sys
import threading
import time
import tracemalloc
import uuid
from dataclasses import asdict, dataclass
from typing import NamedTuple

from confluent_kafka import Consumer, KafkaError, Producer

from schemas import Order, Payment, Recovery, fast
from streams.join import changelog, compact, native
from streams.join.core import Decisions, JoinParams, PartitionJoin
from streams.join.restore import Restorer
from streams.join.state import Change, Store
from streams.join.worker import JoinWorker, tune_gc
from streams.kafka import config
from streams.kafka.topics import create_topics
from streams.ops import metrics
from streams.settings import Settings
from streams.tools import kstreams_peer
from streams.tools.loadgen import Shares, merged, plan, produce


@dataclass
class CoreFigures:
    """One join core (SLIPGUARD_CORE) on one workload: medians of `runs` drains, each in a
    fresh group, the cores interleaved run by run on the same records."""

    core: str
    runs_events_per_s: list[float]
    join_events_per_s: float
    ratio: float  # join / ceiling, medians
    join_cpu_s_per_million: float
    changelog_records_per_event: float
    pending_entries_peak: int
    released_by_hold_limits: int  # records fed ahead of their pair's other partition (merge's hold limits)
    commit_us_per_event: float  # the join's commits (changelog produce, offsets, transaction), per event


@dataclass
class WorkloadFigures:
    workload: str
    events: int
    ceiling_events_per_s: float
    cores: list[CoreFigures]
    # The Kafka share: what the client costs the join, apart from the join's own work.
    read_only_us_per_event: float  # consume() and the Message objects, nothing read of them but the value
    produce_us_per_record: float  # one produce() into an open transaction, ~200-byte records
    # The Kafka Streams peer (kstreams_peer.py) on the same records, one run; None where java or mvn is missing.
    kstreams_events_per_s: float | None = None
    kstreams_cpu_s_per_million: float | None = None


@dataclass
class CoreWide:
    """What one core does beyond the workloads: restore and live detection latency."""

    core: str
    restore_records_per_s: float
    restore_seconds: float
    detection_latency_p50_s: float
    detection_latency_p99_s: float
    recoveries_expected: int
    recoveries_seen: int


@dataclass
class Figures:
    partitions: int
    guarantee: str
    runs: int
    workloads: list[WorkloadFigures]
    join_peak_rss_mb: float
    bytes_per_pending_entry: float
    bytes_per_pending_entry_native: float | None
    restore_entries: int
    live_rate_per_s: float
    cores: list[CoreWide]


ALL_MISSING = Shares(missing=1.0, late=0, duplicates=0, second_payment=0, failed=0, mismatch=0)
class Workload(NamedTuple):
    events_per_order: float  # payment and order records per order id, on average
    spacing_ms: float | None  # event time between order ids; None: the whole plan over 50 minutes
    shares: Shares


WORKLOADS = {
    "spread": Workload(1.94, None, Shares()),
    "delayed": Workload(1.99, 0.05, Shares(missing=0.01, late=0, duplicates=0, second_payment=0, failed=0, mismatch=0,
                                           delay_ms=(0, 3_000))),
}


def _bench_settings(s: Settings, partitions: int, **over: object) -> Settings:
    return s.with_prefix(f"bench-{uuid.uuid4().hex[:6]}", partitions=partitions, **over)


def ceiling(s: Settings, total: int) -> float:
    """Read and decode every input record, nothing else: the most a Python consumer can do
    here (with the native decoder where the join runs native)."""
    c = Consumer(config.consumer(s, f"{s.join_group}-ceiling", **{"enable.partition.eof": False,
                                                                   "fetch.max.bytes": 52_428_800}))
    c.subscribe([s.payments_topic, s.orders_topic])
    payments = s.payments_topic
    if native.uses_native(s) and native.NATIVE is not None:  # the native decoder, the model where it is unsure
        decoders = {True: native.NATIVE.decode_payment, False: native.NATIVE.decode_order}
    else:
        decoders = {True: lambda v: fast.decode(Payment, v), False: lambda v: fast.decode(Order, v)}
    n = 0
    started = None
    while n < total:
        for m in c.consume(10_000, timeout=1.0):
            value = m.value()
            if m.error() or value is None:  # (the bench writes no tombstones)
                continue
            if started is None:
                started = time.perf_counter()
            is_payment = m.topic() == payments
            if decoders[is_payment](value) is None:  # as the join decodes
                fast.decode(Payment if is_payment else Order, value)
            n += 1
    took = time.perf_counter() - (started or time.perf_counter())
    c.close()
    return n / took


def _released() -> int:
    """Records the merge fed ahead of their pair's other partition (a hold limit reached)."""
    return int(sum(metrics.JOIN_HOLD_RELEASED.labels(limit)._value.get() for limit in ("seconds", "records")))


def drain(s: Settings, total: int) -> tuple[float, float, int, int, int, float]:
    """Run the join until it has consumed and committed every input record: events/s,
    CPU seconds per million, peak pending payments, changelog records written, records
    released by the hold limits, seconds spent committing."""
    written0, released0 = metrics.JOIN_CHANGELOG_RECORDS._value.get(), _released()
    worker = JoinWorker(s)
    worker.subscribe()
    committing = [0.0]
    commit = worker.commit

    def timed_commit(**kwargs: bool) -> None:
        t0 = time.perf_counter()
        commit(**kwargs)
        committing[0] += time.perf_counter() - t0

    worker.commit = timed_commit  # type: ignore[method-assign]
    peak_pending = 0
    started = None
    cpu0 = time.process_time()
    while True:
        worker.step()
        done = worker.pipeline.fed
        if started is None and done:
            started, cpu0 = time.perf_counter(), time.process_time()
        peak_pending = max(peak_pending, worker.pipeline.pending_count())
        if done >= total:
            break
    worker.commit()
    took = time.perf_counter() - (started or time.perf_counter())
    cpu = time.process_time() - cpu0
    worker.close()
    return (total / took, cpu / total * 1e6, peak_pending, int(metrics.JOIN_CHANGELOG_RECORDS._value.get() - written0),
            _released() - released0, committing[0])


def read_only(s: Settings, total: int) -> float:
    """µs per event to consume the records and make their Message objects, nothing else."""
    c = Consumer(config.consumer(s, f"{s.join_group}-read-only", **{"enable.partition.eof": False,
                                                                     "fetch.max.bytes": 52_428_800}))
    c.subscribe([s.payments_topic, s.orders_topic])
    n, started = 0, None
    while n < total:
        for m in c.consume(10_000, timeout=1.0):
            if m.error():
                continue
            if started is None:
                started = time.perf_counter()
            m.value()
            n += 1
    took = time.perf_counter() - (started or time.perf_counter())
    c.close()
    return took / n * 1e6


def produce_cost(s: Settings, records: int = 200_000) -> float:
    """µs per produce() of a ~200-byte record into an open transaction, delivered and
    committed (as the join writes its changelog)."""
    p = Producer(config.producer(s, transactional_id=f"{s.join_group}-produce-cost", **{"linger.ms": 50}))
    p.init_transactions(30)
    p.begin_transaction()
    value = b"v" * 200
    started = time.perf_counter()
    for i in range(records):
        while True:
            try:
                p.produce(s.changelog_topic, value, b"p:%d" % i, i % s.partitions)
                break
            except BufferError:
                p.poll(0.01)
    p.commit_transaction(60)
    return (time.perf_counter() - started) / records * 1e6


def _malloc_in_use() -> int:
    """Bytes the C allocator has handed out and not had back (glibc's mallinfo2): where the
    native core's allocations go, which tracemalloc does not see."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def bytes_per_pending_native(n: int = 100_000) -> float | None:
    """bytes_per_pending for the native core (None where it is not built): the C allocator's
    bytes in use before and after n payments are pending in a native Core, past a commit."""
    if native.NATIVE is None:
        return None
    pays, _, _ = plan(n, start_ms=1_800_000_000_000, spacing_ms=1, timeout_ms=3_600_000,
                      shares=Shares(missing=1.0, late=0, duplicates=0, second_payment=0, failed=0, mismatch=0))
    records = [(ts, raw) for _, _, raw, ts in pays]
    del pays
    gc.collect()
    before = _malloc_in_use()
    core = native.new_core(JoinParams(3_600_000, 5_000, 3_600_000))
    for ts, raw in records:
        if not core.on_payment(ts, raw, None):
            raise AssertionError("the native decoder is sure of the bench's payments")
    del ts, raw
    core.take_changes()  # (returned to Python and dropped at once)
    gc.collect()
    after = _malloc_in_use()
    assert core.sizes()[0] == n, "every payment is pending"
    return (after - before) / n


def _pairs(n: int, width: int) -> list[tuple[int, bytes, bytes]]:
    """n orders and their payments, one per millisecond, ids of `width` characters."""
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    start = 1_800_000_000_000
    out = []
    for i in range(n):
        ts = start + i
        when = datetime.fromtimestamp(ts / 1000, UTC)
        oid, pid = f"o{i:0{width - 1}d}", f"p{i:0{width - 1}d}"
        o = Order(order_id=oid, user_id="u-1", amount=Decimal("10.5"), currency="CNY", created_at=when)
        p = Payment(payment_id=pid, order_id=oid, user_id="u-1", amount=Decimal("10.5"), currency="CNY",
                    status="succeeded", paid_at=when + timedelta(milliseconds=1))
        out.append((ts, o.encode(), p.encode()))
    return out


def bytes_per_settled(n: int = 100_000, width: int = 6, core: str = "python") -> float | None:
    """Memory a settled pair costs (state.py: its order_id, its payment's fingerprint, its
    window's end), in a core of each kind (None: native not built): n pairs matched, then
    past their window, with the late horizon ahead (settled) and without (forgotten), past a
    commit; the difference per pair. Python: tracemalloc; native: the C allocator."""
    if core == "native" and native.NATIVE is None:
        return None
    pairs = _pairs(n, width)
    params = [JoinParams(60_000, 5_000, horizon) for horizon in (3_600_000, 1)]
    end = pairs[-1][0] + 65_002
    # Two failed payments stamped `end` (they keep nothing): settled pairs are forgotten by
    # what the payments' records confirm, not by the clock.
    ticks = [Payment.decode(pairs[-1][2]).model_copy(update={"status": "failed", "payment_id": f"tick{i}"}).encode()
             for i in range(2)]
    used = []
    for p in params:
        gc.collect()
        if core == "native":
            before = _malloc_in_use()
            c = native.new_core(p)
            for ts, o, pay in pairs:
                c.on_order(ts, o, None)
                c.on_payment(ts + 1, pay, None)
            for tick in ticks:
                c.on_payment(end, tick, None)
            c.take_decisions()
            c.advance(end, True, True)
            c.take_changes()
            gc.collect()
            used.append(_malloc_in_use() - before)
        else:
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            c = PartitionJoin(p)
            out = Decisions()
            for ts, o, pay in pairs:
                c.on_order(ts, fast.decode(Order, o), o, out)
                c.on_payment(ts + 1, fast.decode(Payment, pay), pay, out)
            for tick in ticks:
                c.on_payment(end, fast.decode(Payment, tick), tick, out)
            c.advance(end, True, True, out)
            c.state.take_changes()
            del out
            gc.collect()
            used.append(tracemalloc.get_traced_memory()[0] - before)
            tracemalloc.stop()
        assert c.sizes() == (0, 0, 0)
        del c
    return (used[0] - used[1]) / n


def bytes_per_pending(n: int = 100_000) -> float:
    """Memory the core keeps per pending payment, everything counted: its compact entry,
    its order_id (the map's key, allocated by the decoder while tracing), its timer, the
    maps. Measured after the commit's take_changes(), as a payment pending across commits
    is. (The raw record, allocated by the plan before tracing starts, is not kept: an
    entry holds the compact form. Earlier entries kept it, and this counted it by size.)"""
    pays, _, _ = plan(n, start_ms=1_800_000_000_000, spacing_ms=1, timeout_ms=3_600_000,
                      shares=Shares(missing=1.0, late=0, duplicates=0, second_payment=0, failed=0, mismatch=0))
    records = [(ts, raw) for _, _, raw, ts in pays]
    del pays
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    core = PartitionJoin(JoinParams(3_600_000, 5_000, 3_600_000))
    out = Decisions()
    for ts, raw in records:
        core.on_payment(ts, fast.decode(Payment, raw), raw, out)  # decoded as the join decodes
    core.state.take_changes()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(core.pending) == n, "every payment is pending"
    assert not any(raw is e for _, raw in records[:100] for e in core.pending.values()), "no raw record is kept"
    return (after - before) / n


def restore_rate(s: Settings, entries: int = 1_000_000) -> tuple[float, float]:
    """Restore a changelog of `entries` pending payments over every partition: records/s, seconds."""
    r = _bench_settings(s, s.partitions)
    create_topics(r)
    pays, _, _ = plan(entries, start_ms=1_800_000_000_000, spacing_ms=1, timeout_ms=3_600_000, shares=ALL_MISSING,
                      seed=5)
    producer = Producer(config.producer(r))
    for i, (_, key, raw, ts) in enumerate(pays):
        # as the join keeps it, and writes it at a commit
        entry = compact.entry(ts, compact.pack_payment(fast.decode(Payment, raw)), compact.PERSISTED)
        k, v = changelog.encode(Change(Store.PENDING, key.decode(), entry))
        while True:
            try:
                producer.produce(r.changelog_topic, v, k, i % r.partitions)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0
    del pays
    gc.collect()
    params = JoinParams(r.order_timeout, r.grace, r.late_horizon, r.hmac_keys)
    restorer = Restorer(r, params, lambda: int(time.time() * 1000), lambda: False,
                        native.restore if native.uses_native(r) else None)
    started = time.perf_counter()
    restored = restorer.restore_now(list(range(r.partitions)))
    took = time.perf_counter() - started
    restorer.close()
    got = sum(core.sizes()[0] for core in (restored or {}).values())
    assert got == entries, f"restored {got} of {entries} entries"
    return entries / took, took


def live_latency(s: Settings, rate: float, seconds: float) -> tuple[list[float], int, int]:
    """Steady live traffic with real timestamps; returns emit-minus-deadline of each recovery."""
    live = _bench_settings(s, s.partitions, order_timeout="2s", grace="1s", processing_guarantee=s.processing_guarantee)
    create_topics(live)
    worker = JoinWorker(live)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: _run_until(worker, stop), daemon=True)
    thread.start()
    time.sleep(3)  # join the group, restore, read to the (empty) end
    count = int(rate * seconds / 2.1)
    pays, ords, exp = plan(count, start_ms=int(time.time() * 1000) + 500, spacing_ms=1000 / (rate / 2.1),
                           timeout_ms=2_000, shares=Shares(jitter_ms=200), seed=99)
    produce(live, merged(pays, ords), realtime=True)
    time.sleep(5)
    stop.set()
    thread.join(30)
    c = Consumer(config.consumer(live, f"{live.join_group}-reader", **{"enable.partition.eof": True}))
    c.subscribe([live.recovery_topic])
    lat: list[float] = []
    ends = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and ends < live.partitions:
        for m in c.consume(1000, timeout=0.5):
            err, value = m.error(), m.value()
            if err is not None:
                ends += err.code() == KafkaError._PARTITION_EOF
                continue
            if value is None:
                continue
            r = Recovery.decode(value)
            lat.append((r.detected_at - r.deadline).total_seconds())
    c.close()
    return lat, len(exp.recovered), len(lat)


def _run_until(worker: JoinWorker, stop: threading.Event) -> None:
    worker.subscribe()
    while not stop.is_set():
        worker.step()
    worker.commit()
    worker.close()


def produce_workload(s: Settings, name: str, events: int) -> tuple[Settings, int]:
    """A workload in fresh topics (made here): their settings and the record count."""
    b = _bench_settings(s, s.partitions)
    create_topics(b)
    work = WORKLOADS[name]
    orders = int(events / work.events_per_order) + 1
    spacing = work.spacing_ms or 3_000_000 / orders
    print(f"bench [{name}]: planning {events:,} events over {b.partitions} partitions ...", file=sys.stderr, flush=True)
    pays, ords, _ = plan(orders, start_ms=int(time.time() * 1000) - 3_600_000, spacing_ms=spacing,
                         timeout_ms=b.order_timeout, shares=work.shares)
    total = len(pays) + len(ords)
    print(f"bench [{name}]: producing {total:,} records ...", file=sys.stderr, flush=True)
    produce(b, merged(pays, ords))
    del pays, ords
    gc.collect()
    return b, total


def _core_runs(b: Settings, total: int, ceil: float, cores: list[str], runs: int) -> list[CoreFigures]:
    """Each core drains the workload `runs` times, each time in a fresh group, the cores
    interleaved (alternating which goes first) so that a slower moment of the machine falls
    on both."""
    got: dict[str, list[tuple[float, float, int, int, int, float]]] = {core: [] for core in cores}
    for i in range(runs):
        for core in cores if i % 2 == 0 else cores[::-1]:
            group = b.derive(join_group=f"{b.join_group}-{core}-{i}", core=core)
            create_topics(group)  # its own changelog
            got[core].append(drain(group, total))
            rate, cpu = got[core][-1][:2]
            print(f"bench [{b.payments_topic}] run {i + 1} {core}: {rate:,.0f} events/s, {cpu:.2f} s CPU per million",
                  file=sys.stderr, flush=True)
    out = []
    for core, results in got.items():
        rates, cpus, peaks, written, released, committing = zip(*results, strict=True)
        rate = statistics.median(rates)
        out.append(CoreFigures(
            core=core, runs_events_per_s=[round(r) for r in rates], join_events_per_s=round(rate),
            ratio=round(rate / ceil, 3), join_cpu_s_per_million=round(statistics.median(cpus), 2),
            changelog_records_per_event=round(statistics.median(written) / total, 3), pending_entries_peak=max(peaks),
            released_by_hold_limits=round(statistics.median(released)),
            commit_us_per_event=round(statistics.median(committing) / total * 1e6, 3)))
    return out


def workload(s: Settings, name: str, events: int, partitions: int, cores: list[str], runs: int) -> WorkloadFigures:
    b, total = produce_workload(s.derive(partitions=partitions), name, events)
    print(f"bench [{name}]: ceiling (read + decode only) ...", file=sys.stderr, flush=True)
    ceil = ceiling(b, total)
    print(f"bench [{name}]: join ({b.processing_guarantee}, durable state), {runs} runs of {', '.join(cores)} ...",
          file=sys.stderr, flush=True)
    per_core = _core_runs(b, total, ceil, cores, runs)
    print(f"bench [{name}]: the Kafka share (consume only, produce) ...", file=sys.stderr, flush=True)
    read_us, produce_us = read_only(b, total), produce_cost(b)
    peer: tuple[float | None, float | None] = (None, None)
    why = kstreams_peer.available()
    if why:
        print(f"bench [{name}]: no Kafka Streams peer: {why}", file=sys.stderr, flush=True)
    else:
        print(f"bench [{name}]: Kafka Streams {kstreams_peer.KAFKA_STREAMS} leftJoin, exactly_once_v2 ...",
              file=sys.stderr, flush=True)
        rate_ks, cpu_ks = kstreams_peer.drain(b, total, kstreams_peer.command())
        peer = (round(rate_ks), round(cpu_ks, 2))
    return WorkloadFigures(workload=name, events=total, ceiling_events_per_s=round(ceil), cores=per_core,
                           read_only_us_per_event=round(read_us, 3), produce_us_per_record=round(produce_us, 3),
                           kstreams_events_per_s=peer[0], kstreams_cpu_s_per_million=peer[1])


def available_cores() -> list[str]:
    """The cores this install can run: both where the native one is built."""
    return ["native", "python"] if native.NATIVE is not None else ["python"]


def core_wide(s: Settings, core: str, partitions: int, live_rate: float, live_seconds: float,
              restore_entries: int) -> CoreWide:
    c = s.derive(core=core)
    print(f"bench [{core}]: restoring a changelog of {restore_entries:,} entries ...", file=sys.stderr, flush=True)
    restore_per_s, restore_s = restore_rate(_bench_settings(c, partitions), restore_entries)
    print(f"bench [{core}]: live detection latency at {live_rate:.0f} events/s for {live_seconds:.0f}s ...",
          file=sys.stderr, flush=True)
    lat, want, seen = live_latency(_bench_settings(c, partitions), live_rate, live_seconds)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return CoreWide(core=core, restore_records_per_s=round(restore_per_s), restore_seconds=round(restore_s, 2),
                    detection_latency_p50_s=round(q[49], 3), detection_latency_p99_s=round(q[98], 3),
                    recoveries_expected=want, recoveries_seen=seen)


def run(s: Settings, events: int, partitions: int, live_rate: float, live_seconds: float, runs: int = 5,
        cores: list[str] | None = None, restore_entries: int = 1_000_000) -> Figures:
    tune_gc()  # as `slipguard join` does
    cores = cores or available_cores()
    figures = [workload(s, name, events, partitions, cores, runs) for name in WORKLOADS]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("bench: memory per pending entry ...", file=sys.stderr, flush=True)
    per_entry = bytes_per_pending()
    per_entry_native = bytes_per_pending_native()
    wide = [core_wide(s, core, partitions, live_rate, live_seconds, restore_entries) for core in cores]
    return Figures(partitions=partitions, guarantee=s.processing_guarantee, runs=runs, workloads=figures,
                   join_peak_rss_mb=round(rss_mb, 1), bytes_per_pending_entry=round(per_entry),
                   bytes_per_pending_entry_native=None if per_entry_native is None else round(per_entry_native),
                   restore_entries=restore_entries, live_rate_per_s=live_rate, cores=wide)


def report(f: Figures) -> str:
    """A table with a column per core (medians of f.runs drains each; a row with one cell is
    the same for every core), then the JSON."""
    cores = [c.core for c in f.cores]
    memory = {"native": f"{f.bytes_per_pending_entry_native or 0:,.0f} (C allocator)",
              "python": f"{f.bytes_per_pending_entry:,.0f} (tracemalloc)"}
    rows: list[tuple[str, list[str]]] = [
        ("", cores), ("partitions / guarantee / runs", [f"{f.partitions} / {f.guarantee} / {f.runs}"])]
    for w in f.workloads:
        n, by = f"[{w.workload}]", w.cores
        rows += [
            (f"{n} input events", [f"{w.events:,}"]),
            (f"{n} ceiling: read + decode only, events/s", [f"{w.ceiling_events_per_s:,.0f}"]),
            (f"{n} join, events/s (median)", [f"{c.join_events_per_s:,.0f}" for c in by]),
            (f"{n} join, each run, k events/s", [" ".join(f"{r / 1000:.0f}" for r in c.runs_events_per_s) for c in by]),
            (f"{n} join / ceiling", [f"{c.ratio:.2f}" for c in by]),
            (f"{n} join CPU, s per million events", [f"{c.join_cpu_s_per_million:.2f}" for c in by]),
            (f"{n} changelog records per input event", [f"{c.changelog_records_per_event:.3f}" for c in by]),
            (f"{n} pending payments at peak", [f"{c.pending_entries_peak:,}" for c in by]),
            (f"{n} records released by the merge's hold limits", [f"{c.released_by_hold_limits:,}" for c in by]),
            (f"{n} Kafka share: the join's commits, µs per event", [f"{c.commit_us_per_event:.2f}" for c in by]),
            (f"{n} Kafka share: consume + Message objects, µs per event", [f"{w.read_only_us_per_event:.2f}"]),
            (f"{n} Kafka share: one produce() in a transaction, µs", [f"{w.produce_us_per_record:.2f}"]),
        ]
        if w.kstreams_events_per_s:
            rows += [
                (f"{n} Kafka Streams {kstreams_peer.KAFKA_STREAMS} leftJoin, exactly_once_v2, one run",
                 [f"{w.kstreams_events_per_s:,.0f} events/s, {w.kstreams_cpu_s_per_million:.2f} s CPU per million"]),
                (f"{n} join / Kafka Streams", [f"{c.join_events_per_s / w.kstreams_events_per_s:.2f}" for c in by]),
            ]
    rows += [
        ("peak RSS of the process, MB", [f"{f.join_peak_rss_mb:.0f}"]),
        ("memory per pending payment, B", [memory[c] for c in cores]),
        (f"restore of {f.restore_entries:,} changelog entries, records/s",
         [f"{c.restore_records_per_s:,.0f} ({c.restore_seconds:.1f} s)" for c in f.cores]),
        (f"detection latency p50 / p99, s (emit - deadline, grace 1 s, {f.live_rate_per_s:,.0f} events/s)",
         [f"{c.detection_latency_p50_s:.3f} / {c.detection_latency_p99_s:.3f}" for c in f.cores]),
        ("live recoveries seen / expected", [f"{c.recoveries_seen} / {c.recoveries_expected}" for c in f.cores]),
    ]
    width = max(len(label) for label, _ in rows)
    column = max(len(cell) for _, cells in rows if len(cells) > 1 for cell in cells[:-1]) if len(cores) > 1 else 0
    return "\n".join(f"{label.ljust(width)}  {'  '.join(c.ljust(column) for c in cells[:-1])}"
                     f"{'  ' if len(cells) > 1 else ''}{cells[-1]}".rstrip() for label, cells in rows) \
        + "\n" + json.dumps(asdict(f))


# ---------------------------------------------------------------- the recovery writer


@dataclass
class WriterFigures:
    rows: int
    rows_per_s: float
    ceiling_rows_per_s: float  # the same app reading, decoding and acking, writing nothing
    steady_rate_per_s: float
    latency_p50_s: float
    latency_p99_s: float


def _writer_settings(s: Settings) -> Settings:
    import psycopg

    from streams.db import migrate

    b = _bench_settings(s, s.partitions)
    schema = f"bench_{b.worker_id().replace('-', '_')}"  # our own name: letters, digits, underscores
    url = s.database_url.get_secret_value()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")  # our own name: letters, digits, underscores
    sep = "&" if "?" in url else "?"
    b = b.derive(database_url=f"{url}{sep}options=-csearch_path%3D{schema}")
    create_topics(b)
    migrate(b.database_url.get_secret_value())
    return b


def _recoveries(n: int, start: int, detected_ms: int | None = None) -> list[tuple[bytes, bytes]]:
    from datetime import timedelta
    from decimal import Decimal

    from schemas import Payment, recovery_id_for
    from schemas.fields import from_epoch_ms

    base = from_epoch_ms(detected_ms or int(time.time() * 1000))
    out = []
    for i in range(start, start + n):
        oid = f"wb-{i}"
        p = Payment(payment_id=f"wbp-{i}", order_id=oid, user_id=f"u{i % 977}", amount=Decimal("25.50"), currency="CNY",
                    status="succeeded", paid_at=base - timedelta(seconds=70), metadata={"game": "baccarat"})
        r = Recovery(recovery_id=recovery_id_for(p.payment_id), order_id=oid, payment=p,
                     deadline=base - timedelta(seconds=10), detected_at=base)
        out.append((oid.encode(), r.encode()))
    return out


class _AuditRows:
    """The audit rows written so far, for the bench's 50 ms polls: counted as they come, the
    rows past the highest id seen, on one connection. `SELECT count(*)` over the whole table
    on a new connection each time (before 2026-12-07) was itself a load that grew with the
    table: at 300,000 rows a parallel scan of three processes every poll, competing with the
    writer and PostgreSQL for the machine's cores. Exact with the writer's one transaction
    at a time: a batch's ids are drawn after the previous batch committed (check() counts
    the whole table once at the end to make sure)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        # The new rows through the primary key, whatever the planner knows: before the table's
        # first autoanalyze (a minute or so) it guesses a third of the table for `id > $1`
        # and scans all of it, in parallel.
        for setting in ("enable_seqscan", "enable_bitmapscan"):
            self.conn.execute(f"SET {setting} = off")  # (our own constant names)
        self.conn.execute("SET max_parallel_workers_per_gather = 0")
        self.seen, self.last_id = 0, 0

    def count(self) -> int:
        from streams.db import one

        n, top = one(self.conn.execute("SELECT count(*), max(id) FROM recovery_audit WHERE id > %s",
                                       (self.last_id,)))
        if n:
            self.seen, self.last_id = self.seen + int(n), int(top)
        return self.seen

    def check(self) -> None:
        from streams.db import one

        total = int(one(self.conn.execute("SELECT count(*) FROM recovery_audit"))[0])
        if total != self.seen:
            raise RuntimeError(f"bench-writer counted {self.seen:,} audit rows as they came, the table holds {total:,}")

    def close(self) -> None:
        self.conn.close()


def writer_bench(s: Settings, rows: int, rate: float, seconds: float) -> WriterFigures:
    import os
    import subprocess
    import sys

    import psycopg
    from confluent_kafka import Producer

    from streams.db import one

    b = _writer_settings(s)
    url = b.database_url.get_secret_value()
    producer = Producer(config.producer(b))
    for key, value in _recoveries(rows, 0):
        producer.produce(b.recovery_topic, value, key)
        producer.poll(0)
    producer.flush(60)

    env = dict(os.environ) | b.to_env()
    env["SLIPGUARD_METRICS_PORT"] = "0"
    env["SLIPGUARD_LOG_LEVEL"] = "WARNING"
    proc = subprocess.Popen([sys.executable, "-m", "streams", "recover"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    counter = _AuditRows(url)
    count = counter.count
    try:
        while count() == 0:
            time.sleep(0.05)
        started = time.perf_counter()
        while count() < rows:
            time.sleep(0.05)
        rows_per_s = rows / (time.perf_counter() - started)
        # The ceiling: the same records, read again by a group of its own with nothing written.
        ceiling_env = env | {"SLIPGUARD_RECOVER_GROUP": f"{b.recover_group}-ceiling"}
        done = subprocess.run([sys.executable, "-m", "streams.tools.writer_ceiling", str(rows)], env=ceiling_env,
                              capture_output=True, text=True, timeout=600)
        ceiling_rows_per_s = float(re.findall(r"\d+", done.stdout)[-1])  # (after faust's terminal escapes)

        # Steady rate: each record carries detected_at = the moment it is produced.
        n = int(rate * seconds)
        steady_start = time.perf_counter()
        for i in range(n):
            key, value = _recoveries(1, rows + i)[0]
            producer.produce(b.recovery_topic, value, key)
            producer.poll(0)
            wait = i / rate - (time.perf_counter() - steady_start)
            if wait > 0:
                time.sleep(wait)
        producer.flush(30)
        while count() < rows + n:
            time.sleep(0.1)
        with psycopg.connect(url) as conn:
            p50, p99 = one(conn.execute(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), "
                "       percentile_cont(0.99) WITHIN GROUP (ORDER BY d) "
                "FROM (SELECT extract(epoch FROM written_at - detected_at) AS d FROM recovery_audit "
                "      WHERE substr(order_id, 4)::bigint >= %s) t",  # the steady phase's: wb-<rows + i>
                (rows,)))
        counter.check()
    finally:
        proc.terminate()
        proc.wait(60)
        counter.close()
    return WriterFigures(rows=rows, rows_per_s=round(rows_per_s), ceiling_rows_per_s=round(ceiling_rows_per_s),
                         steady_rate_per_s=rate,
                         latency_p50_s=round(p50, 3), latency_p99_s=round(p99, 3))


def writer_report(f: WriterFigures) -> str:
    return (f"recovery writer: {f.rows:,} pre-produced recoveries written at {f.rows_per_s:,.0f} rows/s (one process)\n"
            f"ceiling (the same app reading, decoding and acknowledging them, writing nothing): "
            f"{f.ceiling_rows_per_s:,.0f} records/s; ratio {f.rows_per_s / f.ceiling_rows_per_s:.2f}\n"
            f"steady {f.steady_rate_per_s:,.0f} records/s: record-to-row latency p50 {f.latency_p50_s:.3f} s, "
            f"p99 {f.latency_p99_s:.3f} s\n" + json.dumps(asdict(f)))
