"""`slipguard recover` (the recovery writer) and `slipguard db migrate`."""

from __future__ import annotations

import argparse
import sys

from streams.cli.flags import KAFKA_CLIENT, Commands, command, group, settings_in
from streams.settings import Settings


def _recover(settings: Settings, args: argparse.Namespace) -> int:
    from streams.recover.worker import CannotStart, run

    try:
        return run(settings)
    except CannotStart as exc:
        print(f"slipguard recover: {exc}", file=sys.stderr)
        return 1


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


def register(commands: Commands) -> None:
    uses = (*KAFKA_CLIENT, "recovery_topic", "late_topic", "dlq_topic", "recover_group", "database_url",
            *settings_in("signatures and personal data", "metrics endpoint"))
    command(commands, "recover", "run one member of the recovery-writer group (faust-streaming)", _recover, uses)
    db = group(commands, "db", "database schema")
    command(db, "migrate", "create or upgrade the schema; idempotent", _migrate,
            ("database_url", *settings_in("logging")))
