"""`slipguard join`: one member of the join consumer group."""

from __future__ import annotations

import argparse
import logging
import sys

from confluent_kafka import KafkaException

from streams.cli.flags import KAFKA_CLIENT, Commands, command, settings_in
from streams.settings import Settings

log = logging.getLogger("slipguard.join")


def _join(settings: Settings, args: argparse.Namespace) -> int:
    from streams.join import JoinFailed
    from streams.join.worker import JoinWorker, tune_gc
    from streams.ops.health import serve_metrics

    tune_gc()
    try:
        worker = JoinWorker(settings)
    except KafkaException as exc:  # a client configuration librdkafka refuses
        print(f"slipguard join: cannot create the Kafka clients: {exc.args[0]}", file=sys.stderr)
        return 1
    worker.install_signal_handlers()  # before anything that may wait on the broker
    serve_metrics(settings.metrics_port_for("join"), health=worker, host=settings.metrics_host)
    log.info("join worker %s starting: group %s, %s, timeout %d ms, grace %d ms", settings.instance_id,
             settings.join_group, settings.processing_guarantee, settings.order_timeout, settings.grace)
    try:
        worker.run(max_seconds=args.max_seconds)
    except JoinFailed as exc:
        print(f"slipguard join: {exc}", file=sys.stderr)
        return 1
    log.info("join worker stopped cleanly")
    return 0


def register(commands: Commands) -> None:
    uses = (*KAFKA_CLIENT, "join_group", "instance_id",
            *settings_in("topics", "the join's rules", "the join's tuning", "topics slipguard creates",
                         "signatures and personal data", "metrics endpoint"))
    join = command(commands, "join", "run one member of the join consumer group", _join, uses)
    join.add_argument("--max-seconds", type=float, default=None, help="stop after this long (for tests and demos)")
