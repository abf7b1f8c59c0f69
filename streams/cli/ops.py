"""Operator commands: `slipguard topics create` and `slipguard lag`."""

from __future__ import annotations

import argparse
import sys

from streams.cli.flags import add_settings_flags
from streams.settings import Settings


def _topics_create(settings: Settings, args: argparse.Namespace) -> int:
    from streams.kafka.topics import TopicLayoutError, create_topics

    try:
        for line in create_topics(settings):
            print(line)
    except TopicLayoutError as exc:
        print(f"slipguard topics create: {exc}", file=sys.stderr)
        return 3
    return 0


def _lag(settings: Settings, args: argparse.Namespace) -> int:
    import json
    import signal
    import threading

    from streams.ops.lag import LagError, as_dicts, as_table, group_lag
    from streams.ops.exporter import LagCollector
    from streams.ops.health import serve_metrics

    groups = args.group or [settings.join_group, settings.recover_group]
    if args.serve:
        port = settings.metrics_port if settings.metrics_port is not None else 9402
        LagCollector(settings, groups, interval=args.interval, topics=args.topic).start()
        serve_metrics(port, host=settings.metrics_host)
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


def register(commands) -> None:
    topics = commands.add_parser("topics", help="create or verify topics")
    topics_sub = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = topics_sub.add_parser("create", help="create or verify every topic; payments and orders co-partitioned")
    add_settings_flags(create)
    create.set_defaults(handler=_topics_create)

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
