"""Operator and tooling commands: lag, loadgen, bench, bench-writer, demo."""

from __future__ import annotations

import argparse
import sys
import time

from streams.settings import Settings


def _loadgen(settings: Settings, args: argparse.Namespace) -> int:
    from streams.loadgen import Shares, merged, plan, produce

    shares = Shares(missing=args.missing, late=args.late, duplicates=args.duplicates, second_payment=args.second_payment,
                    mismatch=args.mismatch, failed=args.failed, jitter_ms=int(args.jitter * 1000))
    now = int(time.time() * 1000)
    spacing = 1000 / (args.rate / 2) if args.rate else 1.0
    start = now if args.rate else now - int(args.count * spacing) - settings.order_timeout
    pays, ords, exp = plan(args.count, start_ms=start, spacing_ms=spacing, timeout_ms=settings.order_timeout,
                           shares=shares, seed=args.seed)
    print(f"loadgen: {args.count:,} orders -> {len(pays):,} payments, {len(ords):,} orders "
          f"({'at ~%d events/s, live timestamps' % args.rate if args.rate else 'as fast as possible, past timestamps'})")
    n = produce(settings, merged(pays, ords), realtime=bool(args.rate))
    print(f"loadgen: produced {n:,} records; the join should recover {len(exp.recovered):,} payments, "
          f"report {len(exp.late):,} late orders and {sum(exp.anomalies.values()):,} anomalies")
    return 0


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    from streams.bench import report, run

    figures = run(settings, args.events, args.bench_partitions, args.live_rate, args.live_seconds)
    print(report(figures))
    return 0


def _bench_writer(settings: Settings, args: argparse.Namespace) -> int:
    from streams.bench import writer_bench, writer_report

    print(writer_report(writer_bench(settings, args.rows, args.steady_rate, args.steady_seconds)))
    return 0


def _bench_failover(settings: Settings, args: argparse.Namespace) -> int:
    from streams.bench_failover import report, run

    print(report(run(settings, args.logs)))
    return 0


def _lag(settings: Settings, args: argparse.Namespace) -> int:
    import json
    import signal
    import threading

    from streams.kafka.lag import LagError, as_dicts, as_table, group_lag
    from streams.observe import LagCollector, serve_metrics

    groups = args.group or [settings.join_group, settings.recover_group]
    if args.serve:
        port = settings.metrics_port if settings.metrics_port is not None else 9402
        LagCollector(settings, groups, interval=args.interval, topics=args.topic).start()
        serve_metrics(port)
        print(f"lag exporter for {', '.join(groups)} on :{port}/metrics (every {args.interval:.0f}s)", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
        return 0
    try:
        rows = group_lag(settings, groups, topics=args.topic, with_seconds=not args.no_seconds)
    except LagError as exc:
        print(f"slipguard lag: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(as_dicts(rows), indent=2) if args.json else as_table(rows))
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from streams.demo import run

    return run(settings, rate=args.rate, seconds=args.seconds)


def register(commands, add_settings_flags) -> None:
    lag = commands.add_parser("lag", help="consumer lag per group, topic and partition")
    add_settings_flags(lag)
    lag.add_argument("--group", action="append", help="a consumer group (repeatable); default: join and recover groups")
    lag.add_argument("--topic", action="append", help="a topic the groups read (repeatable); default: slipguard's "
                                                      "own topics for its groups, every topic for other groups")
    lag.add_argument("--json", action="store_true", help="print JSON")
    lag.add_argument("--no-seconds", action="store_true", help="skip lag in seconds (reads no records)")
    lag.add_argument("--serve", action="store_true", help="run a Prometheus exporter (port: SLIPGUARD_METRICS_PORT, "
                                                          "else 9402)")
    lag.add_argument("--interval", type=float, default=10.0, help="exporter refresh interval, seconds")
    lag.set_defaults(handler=_lag)

    d = commands.add_parser("demo", help="the main job end to end on the local stack, with a checked summary")
    add_settings_flags(d)
    d.add_argument("--rate", type=float, default=1_000, help="events/s of live traffic")
    d.add_argument("--seconds", type=float, default=30, help="how long traffic is produced")
    d.set_defaults(handler=_demo)

    lg = commands.add_parser("loadgen", help="produce realistic payment and order traffic")
    add_settings_flags(lg)
    lg.add_argument("--count", type=int, default=10_000, help="orders (each with a payment, most with an order)")
    lg.add_argument("--rate", type=float, default=0, help="events/s with live timestamps; 0: as fast as possible")
    for share in ("missing", "late", "duplicates", "second_payment", "mismatch", "failed"):
        lg.add_argument(f"--{share.replace('_', '-')}", type=float, default=_share(share),
                        help=f"share of orders: {share.replace('_', ' ')}")
    lg.add_argument("--jitter", type=float, default=2.0, help="out-of-order jitter of orders, seconds")
    lg.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    lg.set_defaults(handler=_loadgen)

    b = commands.add_parser("bench", help="measure the join on the local broker and print figures")
    add_settings_flags(b)
    b.add_argument("--events", type=int, default=1_000_000)
    b.add_argument("--bench-partitions", type=int, default=6)
    b.add_argument("--live-rate", type=float, default=2_000)
    b.add_argument("--live-seconds", type=float, default=20)
    b.set_defaults(handler=_bench)

    f = commands.add_parser("bench-failover", help="measure how long partitions stop when a join worker goes away")
    add_settings_flags(f)
    f.add_argument("--logs", default=".stack/bench-failover", help="where the workers' logs go")
    f.set_defaults(handler=_bench_failover)

    w = commands.add_parser("bench-writer", help="measure the recovery writer into PostgreSQL and print figures")
    add_settings_flags(w)
    w.add_argument("--rows", type=int, default=50_000)
    w.add_argument("--steady-rate", type=float, default=1_000)
    w.add_argument("--steady-seconds", type=float, default=15)
    w.set_defaults(handler=_bench_writer)


def _share(name: str) -> float:
    from streams.loadgen import Shares

    return getattr(Shares(), name)
