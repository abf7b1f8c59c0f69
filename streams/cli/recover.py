"""`slipguard recover` (the recovery writer) and `slipguard db migrate`."""

from __future__ import annotations

import argparse
import logging
import sys

from streams.cli.flags import command, group
from streams.settings import Settings

log = logging.getLogger("slipguard.recover")


def _recover(settings: Settings, args: argparse.Namespace) -> int:
    import faust

    from confluent_kafka.admin import AdminClient

    from streams.kafka import config
    from streams.kafka.topics import TopicLayoutError, check_access, check_group, wait_for_topics
    from streams.ops.health import serve_metrics
    from streams.recover.app import build_app

    try:
        check_access(AdminClient(config.admin(settings)), settings, "writer",
                     [settings.recovery_topic, settings.late_topic, settings.dlq_topic])
        check_group(settings, "writer", settings.recover_group, settings.recovery_topic)
    except TopicLayoutError as exc:
        print(f"slipguard recover: {exc}", file=sys.stderr)
        return 1
    missing = wait_for_topics(settings, [settings.recovery_topic, settings.late_topic])
    if missing:
        print(f"slipguard recover: topic(s) {', '.join(missing)} not found on {settings.bootstrap_servers}; "
              "create them with `slipguard topics create`", file=sys.stderr)
        return 1
    app, writer = build_app(settings)
    serve_metrics(settings.metrics_port_for("recover"), health=writer, host=settings.metrics_host)
    log.info("recovery writer starting: group %s reading %s and %s", settings.recover_group,
             settings.recovery_topic, settings.late_topic)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
        log.info("recovery writer stopped (exit %d)", code)
        return code
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    from streams.db import MigrationError, migrate

    try:
        applied = migrate(settings.database_url.get_secret_value())
    except (MigrationError, psycopg.Error) as exc:
        from streams.ops.logs import redact

        print(redact(f"slipguard db migrate: {exc}".splitlines()[0]), file=sys.stderr)
        return 1
    print("applied: " + ", ".join(applied) if applied else "database schema is up to date")
    return 0


def register(commands) -> None:
    command(commands, "recover", "run one member of the recovery-writer group (faust-streaming)", _recover)
    db = group(commands, "db", "database schema")
    command(db, "migrate", "create or upgrade the schema; idempotent", _migrate)
