"""Tooling commands, not run in production: `demo`, `loadgen`, `bench`, `bench-failover`, `bench-writer`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from streams.cli.flags import KAFKA_CLIENT, Commands, command, settings_in
from streams.settings import Settings


def _loadgen(settings: Settings, args: argparse.Namespace) -> int:
    from streams.tools.loadgen import Shares, merged, plan, produce

    shares = Shares(missing=args.missing, late=args.late, duplicates=args.duplicates,
                    second_payment=args.second_payment, mismatch=args.mismatch, failed=args.failed,
                    jitter_ms=int(args.jitter * 1000))
    now = int(time.time() * 1000)
    spacing = 1000 / (args.rate / 2) if args.rate else 1.0
    start = now if args.rate else now - int(args.count * spacing) - settings.order_timeout
    pays, ords, exp = plan(args.count, start_ms=start, spacing_ms=spacing, timeout_ms=settings.order_timeout,
                           shares=shares, seed=args.seed)
    say = (lambda *a: None) if args.json else print
    pace = f"at ~{args.rate:.0f} events/s, live timestamps" if args.rate else "as fast as possible, past timestamps"
    say(f"loadgen: {args.count:,} orders -> {len(pays):,} payments, {len(ords):,} orders ({pace})")
    from streams.cli.progress import Progress

    progress = Progress(enabled=not args.json)
    n = produce(settings, merged(pays, ords), realtime=bool(args.rate), progress=progress.report,
                total=len(pays) + len(ords))
    progress.done()
    if args.json:
        print(json.dumps({"produced": n, "payments": len(pays), "orders": len(ords), "recovered": len(exp.recovered),
                          "late": len(exp.late), "anomalies": sum(exp.anomalies.values())}))
        return 0
    print(f"loadgen: produced {n:,} records; the join should recover {len(exp.recovered):,} payments, "
          f"report {len(exp.late):,} late orders and {sum(exp.anomalies.values()):,} anomalies")
    return 0


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    from streams.tools.bench import available_cores, report, run

    cores = [c for c in args.cores.split(",") if c] or available_cores()
    if any(c not in available_cores() for c in cores):
        print(f"slipguard bench: --cores takes {', '.join(available_cores())} here; got {args.cores!r}",
              file=sys.stderr)
        return 2
    if args.runs < 1:
        print(f"slipguard bench: --runs takes 1 or more; got {args.runs}", file=sys.stderr)
        return 2
    figures = run(settings, args.events, args.bench_partitions, args.live_rate, args.live_seconds, args.runs, cores,
                  args.restore_entries)
    print(json.dumps(asdict(figures)) if args.json else report(figures))
    return 0


def _bench_ab(settings: Settings, args: argparse.Namespace) -> int:
    from streams.tools.bench import WORKLOADS
    from streams.tools.bench_ab import run

    names = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown or not names:
        print(f"slipguard bench-ab: --workloads takes {', '.join(WORKLOADS)}; got {args.workloads!r}", file=sys.stderr)
        return 2
    cores = [c for c in args.cores.split(",") if c]
    if any(c not in ("native", "python") for c in cores):
        print(f"slipguard bench-ab: --cores takes native, python; got {args.cores!r}", file=sys.stderr)
        return 2
    print(run(settings, args.against, args.runs, args.events, args.bench_partitions, names, cores))
    return 0


def _bench_writer(settings: Settings, args: argparse.Namespace) -> int:
    from streams.tools.bench import writer_bench, writer_report

    figures = writer_bench(settings, args.rows, args.steady_rate, args.steady_seconds)
    print(json.dumps(asdict(figures)) if args.json else writer_report(figures))
    return 0


def _bench_failover(settings: Settings, args: argparse.Namespace) -> int:
    from streams.tools.bench_failover import report, run

    figures = run(settings, args.logs, args.cases, args.protocols)
    print(json.dumps([asdict(f) for f in figures]) if args.json else report(figures))
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from streams.tools.demo import run

    return run(settings, rate=args.rate, seconds=args.seconds, as_json=args.json)


def register(commands: Commands) -> None:
    # The demo sets its own names (prefixed), rules (shortened), instance id and metrics ports.
    demo_uses = (*KAFKA_CLIENT, *settings_in("topics", "the join's tuning", "topics slipguard creates",
                                             "signatures and personal data"), "join_group", "recover_group",
                 "database_url")
    d = command(commands, "demo", "the main job end to end on the local stack, with a checked summary", _demo,
                demo_uses)
    d.add_argument("--rate", type=float, default=1_000, help="events/s of live traffic")
    d.add_argument("--seconds", type=float, default=30, help="how long traffic is produced")
    d.add_argument("--json", action="store_true", help="print the summary as JSON (the running account goes to stderr)")

    lg = command(commands, "loadgen", "produce realistic payment and order traffic", _loadgen,
                 (*KAFKA_CLIENT, "payments_topic", "orders_topic", "order_timeout"))
    lg.add_argument("--count", type=int, default=10_000, help="orders (each with a payment, most with an order)")
    lg.add_argument("--rate", type=float, default=0, help="events/s with live timestamps; 0: as fast as possible")
    for share in ("missing", "late", "duplicates", "second_payment", "mismatch", "failed"):
        lg.add_argument(f"--{share.replace('_', '-')}", type=float, default=_share(share),
                        help=f"share of orders: {share.replace('_', ' ')}")
    lg.add_argument("--jitter", type=float, default=2.0, help="out-of-order jitter of orders, seconds")
    lg.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    lg.add_argument("--json", action="store_true", help="print what was produced and expected as JSON only")

    # The benchmarks make their own topics and groups; they measure the join as configured.
    bench_uses = (*KAFKA_CLIENT, *settings_in("the join's rules", "the join's tuning", "topics slipguard creates",
                                              "signatures and personal data"), "database_url")
    for name, about, handler, flags in (
        ("bench", "measure the join on the local broker and print figures", _bench,
         {"events": 1_000_000, "bench-partitions": 6, "live-rate": 2_000.0, "live-seconds": 20.0, "runs": 5,
          "cores": "", "restore-entries": 1_000_000}),
        ("bench-ab", "measure this tree's join against another commit's, interleaved on the same records", _bench_ab,
         {"against": "HEAD~1", "runs": 5, "events": 500_000, "bench-partitions": 6, "workloads": "spread,delayed",
          "cores": ""}),
        ("bench-failover", "measure how long partitions stop when a join worker goes away", _bench_failover,
         {"logs": ".stack/bench-failover", "cases": "all", "protocols": "consumer,classic"}),
        ("bench-writer", "measure the recovery writer into PostgreSQL and print figures", _bench_writer,
         {"rows": 50_000, "steady-rate": 1_000.0, "steady-seconds": 15.0}),
    ):
        cmd = command(commands, name, about, handler, bench_uses)
        for flag, default in flags.items():
            cmd.add_argument(f"--{flag}", type=type(default), default=default, help=f"default {default}")
        cmd.add_argument("--json", action="store_true", help="print the figures as JSON only (phases go to stderr)")


def _share(name: str) -> float:
    from streams.tools.loadgen import Shares

    return getattr(Shares(), name)
