"""Operator commands: `slipguard topics create`, `slipguard lag` and `slipguard dlq list|replay`."""

from __future__ import annotations

import argparse
import os
import sys

from streams.cli.flags import KAFKA_CLIENT, Commands, command, group, settings_in
from streams.settings import Settings


def _topics_create(settings: Settings, args: argparse.Namespace) -> int:
    from streams.kafka.topics import AccessDenied, TopicLayoutError, create_topics

    try:
        for line in create_topics(settings):
            print(line)
    except AccessDenied as exc:
        print(f"slipguard topics create: {exc}", file=sys.stderr)
        return 1
    except TopicLayoutError as exc:
        print(f"slipguard topics create: {exc}", file=sys.stderr)
        return 3
    return 0


def _lag(settings: Settings, args: argparse.Namespace) -> int:
    import json
    import signal
    import threading

    from streams.ops.exporter import LagCollector
    from streams.ops.health import serve_metrics
    from streams.ops.lag import LagError, as_dicts, as_table, group_lag

    groups = args.group or [settings.join_group, settings.recover_group]
    if args.serve:
        port = settings.metrics_port if settings.metrics_port is not None else 9402
        collector = LagCollector(settings, groups, interval=args.interval, topics=args.topic).start()
        serve_metrics(port, host=settings.metrics_host)
        print(f"lag exporter for {', '.join(groups)} on :{port}/metrics (every {args.interval:.0f}s)", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
        # The exporter keeps no state: it exits at once, without the interpreter's teardown,
        # which destroys the refresh's Kafka clients and has hung past the 60 s a stop is
        # given while a broker was unreachable (a CI rehearsal, 2026-12-07: killed -9 after
        # a group coordinator's kill). A refresh under way gets a few seconds to end.
        ended = collector.stop(wait=5.0)
        print(f"lag exporter stopped{'' if ended else ' (a refresh was still under way)'}", flush=True)
        sys.stderr.flush()
        os._exit(0)
    try:
        rows = group_lag(settings, groups, topics=args.topic, with_seconds=not args.no_seconds)
    except LagError as exc:
        print(f"slipguard lag: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(as_dicts(rows), indent=2) if args.json else as_table(rows))
    return 0


def _dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from streams.ops.dlq import absent, letters, misdirected, replayable

    missing = absent(settings)
    if missing is not None:
        print(f"slipguard dlq list: {missing}", file=sys.stderr)
        return 1
    found = letters(settings, since=args.since, reason=args.reason)
    problems = [misdirected(settings, x) or replayable(x) for x in found]
    if args.json:
        print(json.dumps([{"dlq": x.ref,
                           "source": x.dead and f"{x.dead.source_topic}:{x.dead.partition}:{x.dead.offset}",
                           "failed_at": x.dead and x.dead.failed_at.isoformat(), "error": x.dead and x.dead.error,
                           "replayable": why is None, "problem": why}
                          for x, why in zip(found, problems, strict=True)], indent=2))
        return 0
    for x, why in zip(found, problems, strict=True):
        if x.dead is None:
            print(f"{x.ref:>10}  {x.problem}")
            continue
        flag = "" if why is None else "  [not replayable as is]"
        print(f"{x.ref:>10}  {x.dead.failed_at:%Y-%m-%d %H:%M:%S}  {x.dead.source_topic}:{x.dead.partition}:"
              f"{x.dead.offset}  {x.dead.error[:100]}{flag}")
    print(f"{len(found)} dead letter(s) in {settings.dlq_topic}")
    return 0


def _offsets(text: str) -> tuple[int, int]:
    """`--offsets`: A or A-B, whole numbers, A <= B -> (A, B); ValueError with a one-line reason."""
    import re

    m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", text)
    if m is None:
        raise ValueError(f"--offsets: expected A or A-B (DLQ offsets, whole numbers), got {text!r}")
    first, last = int(m.group(1)), int(m.group(2) or m.group(1))
    if first > last:
        raise ValueError(f"--offsets: expected A <= B, got {text!r}; write {last}-{first}")
    return first, last


def _replay_choice_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the choice of dead letters on the command line (None: nothing)."""
    if args.offsets is None and args.reason is None and args.file is None:
        return "choose what to replay: --offsets A-B, --reason TEXT or --file FILE"
    if args.reason is not None and not args.reason.strip():
        return "--reason is empty, which would select every dead letter; give the text the errors contain"
    if args.offsets is not None:
        try:
            _offsets(args.offsets)
        except ValueError as exc:
            return str(exc)
    if not (args.dry_run or args.yes or (sys.stdin is not None and sys.stdin.isatty())):
        return "no terminal to confirm on: add --yes to replay without asking (or --dry-run to see what would be done)"
    return None


def _confirmed(plan: list[str]) -> bool:
    """Show the plan on the terminal (stderr: stdout says only what was done) and ask."""
    for line in plan:
        print(line, file=sys.stderr)
    count = sum(line.startswith("would replay") for line in plan)
    print(f"replay {count} dead letter(s)? [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _print_replay(lines: list[str], as_json: bool) -> None:
    if not as_json:
        for line in lines:
            print(line)
        return
    import json
    import re

    rows = []
    for line in lines:
        m = re.match(r"(skipped|would replay|replayed)\s+(\d+:\d+):?\s*(.*)", line)
        rows.append({"action": m.group(1), "dlq": m.group(2), "detail": m.group(3)} if m else {"detail": line})
    print(json.dumps(rows, indent=2))


def _dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    from streams.ops.dlq import ReplayError, absent, corrections, letters, replay

    problem = _replay_choice_error(args)
    if problem is not None:
        print(f"slipguard dlq replay: {problem}", file=sys.stderr)
        return 2
    missing = absent(settings)
    if missing is not None:
        print(f"slipguard dlq replay: {missing}", file=sys.stderr)
        return 1
    first, last = _offsets(args.offsets) if args.offsets is not None else (None, None)
    try:
        fixed = corrections(args.file) if args.file else {}
        chosen = letters(settings, reason=args.reason, first=first, last=last)
        if args.file and args.offsets is None and args.reason is None:
            chosen = [x for x in chosen if x.ref in fixed]
        if not (args.dry_run or args.yes):
            plan = replay(settings, chosen, fixed, dry_run=True)
            if not any(line.startswith("would replay") for line in plan):
                _print_replay(plan, args.json)
                return 0
            if not _confirmed(plan):
                print("slipguard dlq replay: not confirmed; nothing was replayed", file=sys.stderr)
                return 1
        _print_replay(replay(settings, chosen, fixed, dry_run=args.dry_run), args.json)
    except ReplayError as exc:
        print(f"slipguard dlq replay: {exc}", file=sys.stderr)
        return 1
    return 0


def _acls(settings: Settings, args: argparse.Namespace) -> int:
    from streams.kafka import acls

    roles = args.role or list(acls.ROLES)
    principals = {role: (args.principal or f"User:slipguard-{role}") for role in roles}
    if args.apply:
        from confluent_kafka.admin import AdminClient

        from streams.kafka import config

        admin = AdminClient(config.admin(settings))
        for role in roles:
            wanted = acls.bindings(settings, role, principals[role])
            for binding, future in admin.create_acls(wanted, request_timeout=30).items():
                try:
                    future.result()
                except Exception as exc:  # noqa: BLE001 (reported per ACL; the others still go on)
                    print(f"slipguard acls: could not add {binding}: {exc}", file=sys.stderr)
                    return 1
            print(f"{principals[role]}: {len(wanted)} ACLs for the {role} role added")
        return 0
    if args.format == "strimzi":
        print("\n---\n".join(acls.strimzi_user(settings, role, api_version=args.strimzi_api_version)
                               for role in roles))
        return 0
    for role in roles:
        print(f"# {role}: {principals[role]}")
        for line in acls.kafka_acls_commands(settings, role, principals[role]):
            print(line)
    return 0


def _explain(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from streams.cli.progress import Progress
    from streams.ops.explain import as_text, explain

    progress = Progress(enabled=not args.json)
    try:
        found = explain(settings, args.order_id, since_ms=int(args.since.timestamp() * 1000) if args.since else None,
                        progress=progress.report, database=not args.no_database)
    except LookupError as exc:
        progress.done()
        print(f"slipguard explain: {exc}", file=sys.stderr)
        return 1
    progress.done()
    print(json.dumps(found.as_dict(), indent=2, ensure_ascii=False) if args.json else as_text(found))
    return 0


def _reset(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from streams.cli.progress import Progress
    from streams.ops.reset import ResetError, check_no_members, execute, make_plan

    if args.to_datetime is None and not args.to_earliest:
        print("slipguard reset: give --to-datetime T or --to-earliest", file=sys.stderr)
        return 2
    if args.dry_run == args.execute:
        print("slipguard reset: give --dry-run (say what would change) or --execute (change it)", file=sys.stderr)
        return 2
    progress = Progress(enabled=not args.json)
    to_ms = None if args.to_earliest else int(args.to_datetime.timestamp() * 1000)
    try:
        plan = make_plan(settings, args.group or settings.join_group, to_ms, progress.report)
        check_no_members(settings, plan.group, plan.moves, say=lambda line: print(line, file=sys.stderr))
        progress.done()
        if args.json:
            print(json.dumps({"group": plan.group, "window_ms": plan.window_ms,
                              "changelog_entries": len(plan.live_keys), "moves": [m.__dict__ for m in plan.moves],
                              "executed": args.execute}, indent=2))
        else:
            print("\n".join(plan.describe()))
        if args.dry_run:
            if not args.json:
                print("dry run: nothing changed; run with --execute to do it")
            return 0
        for line in execute(settings, plan, progress.report):
            progress.done()
            if not args.json:
                print(line)
    except ResetError as exc:
        progress.done()
        print(f"slipguard reset: {exc}", file=sys.stderr)
        return 1
    return 0


def _since(text: str):  # noqa: ANN202
    from datetime import datetime

    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time with its offset, e.g. 2026-11-26T10:00:00+00:00")
    return when


def register(commands: Commands) -> None:
    from streams.kafka import acls  # (names only: no client is loaded)

    topics = group(commands, "topics", "create or verify topics")
    command(topics, "create", "create or verify every topic; payments and orders co-partitioned", _topics_create,
            (*KAFKA_CLIENT, *settings_in("topics", "topics slipguard creates"), "join_group", "grace"))

    lag = command(commands, "lag", "consumer lag per group, topic and partition", _lag,
                  (*KAFKA_CLIENT, "payments_topic", "orders_topic", "recovery_topic", "late_topic", "join_group",
                   "recover_group", *settings_in("metrics endpoint")))
    lag.add_argument("--group", action="append", help="a consumer group (repeatable); default: join and recover groups")
    lag.add_argument("--topic", action="append", help="a topic the groups read (repeatable); default: slipguard's "
                                                      "own topics for its groups, every topic for other groups")
    lag.add_argument("--json", action="store_true", help="print JSON")
    lag.add_argument("--no-seconds", action="store_true", help="skip lag in seconds (reads no records)")
    lag.add_argument("--serve", action="store_true", help="run a Prometheus exporter (port: SLIPGUARD_METRICS_PORT, "
                                                          "else 9402)")
    lag.add_argument("--interval", type=float, default=10.0, help="exporter refresh interval, seconds")

    acl = command(commands, "acls", "the Kafka ACLs each role needs (join, writer, lag, admin), from the settings' "
                                    "topic and group names: as kafka-acls.sh commands, Strimzi entries, or applied",
                  _acls, (*KAFKA_CLIENT, *settings_in("topics"), "join_group", "recover_group"))
    acl.add_argument("--role", action="append", choices=("join", "writer", "lag", "admin"),
                     help="a role (repeatable); default: all four")
    acl.add_argument("--principal", help="the principal to grant to; default User:slipguard-<role>")
    acl.add_argument("--format", choices=("kafka-acls", "strimzi"), default="kafka-acls",
                     help="kafka-acls.sh commands, or Strimzi KafkaUser objects (YAML)")
    acl.add_argument("--strimzi-api-version", choices=acls.STRIMZI_API_VERSIONS, default=acls.STRIMZI_API_VERSION,
                     help="with --format strimzi: v1 for Strimzi 1.x (default), v1beta2 for Strimzi 0.4x-0.51")
    acl.add_argument("--apply", action="store_true", help="add them on the cluster (needs Alter on the cluster)")

    ex = command(commands, "explain", "what slipguard knows about one order: a timeline from the one partition its "
                                      "id hashes to (inputs, the join's state, outputs) and its PostgreSQL rows",
                 _explain, (*KAFKA_CLIENT, "payments_topic", "orders_topic", "recovery_topic", "late_topic",
                            "anomalies_topic", "join_group", "order_timeout", "database_url"))
    ex.add_argument("order_id", metavar="ORDER_ID")
    ex.add_argument("--since", type=_since, help="read the topics from this time (RFC 3339); default: all they hold")
    ex.add_argument("--json", action="store_true", help="print JSON (and no progress)")
    ex.add_argument("--no-database", action="store_true", help="do not read PostgreSQL")

    rs = command(commands, "reset", "replay the join from a time: empty its changelog and move its input offsets "
                                    "(refused while the group has members)", _reset,
                 (*KAFKA_CLIENT, "payments_topic", "orders_topic", "join_group", "order_timeout", "grace",
                  "late_horizon"))
    rs.add_argument("--group", help="the join's group (default: SLIPGUARD_JOIN_GROUP)")
    rs.add_argument("--to-datetime", type=_since, help="replay so that outputs from this time (RFC 3339) on are "
                                                       "derived again")
    rs.add_argument("--to-earliest", action="store_true", help="replay everything the inputs hold")
    rs.add_argument("--dry-run", action="store_true", help="say what would change; change nothing")
    rs.add_argument("--execute", action="store_true", help="change it")
    rs.add_argument("--json", action="store_true", help="print the plan as JSON (and no progress)")

    dlq = group(commands, "dlq", "list or replay the dead-letter queue")
    letters = (*KAFKA_CLIENT, "payments_topic", "orders_topic", "dlq_topic")
    ls = command(dlq, "list", "what is in the DLQ: offset, time, source record, error", _dlq_list, letters)
    ls.add_argument("--since", type=_since, help="failed at or after this time (RFC 3339)")
    ls.add_argument("--reason", help="the error contains this text")
    ls.add_argument("--json", action="store_true", help="print JSON")
    rp = command(dlq, "replay", "re-publish dead letters to their source topic, once each, and only to the join's "
                                "inputs (payments, orders); shows what it will do and asks first", _dlq_replay,
                 (*letters, "replication_factor"))
    rp.add_argument("--offsets", help="DLQ offsets A-B (inclusive) or one offset")
    rp.add_argument("--reason", help="only those whose error contains this text")
    rp.add_argument("--file", help='corrected values: JSON lines {"dlq": "P:O", "value": {...}}')
    rp.add_argument("--dry-run", action="store_true", help="say what would be replayed, publish nothing")
    rp.add_argument("--yes", action="store_true", help="replay without asking (for scripts; without a terminal "
                                                       "it is required)")
    rp.add_argument("--json", action="store_true", help="print what was done as JSON")
