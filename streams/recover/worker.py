"""One member of the recovery-writer group, from start to stop: what `slipguard recover`
runs, and streams.tools.writer_ceiling with the database write left out."""

from __future__ import annotations

import gc
import logging

from streams.recover.writer import MakeWriter, Writer
from streams.settings import Settings

log = logging.getLogger("slipguard.recover")


# Cyclic-GC thresholds for the writer: a young collection every 100,000 net allocations
# rather than 700, an older one every 50 of those, a full one every 10 older ones (about
# every 50 M allocations, a minute or two at full speed: cycles a retry's traceback or
# faust leaves are still collected). The writer allocates a few dozen objects per record,
# and a batch's records live until it is committed, so with the defaults they were walked
# again and again, and each full pass walked every module and class too (which freeze()
# takes out of the collector's sight once the app is built).
GC_THRESHOLDS = (100_000, 50, 10)


def tune_gc() -> None:
    """Fewer and smaller cyclic-GC passes (GC_THRESHOLDS); called once the app is built."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class CannotStart(Exception):
    """The writer cannot start; the message says why and what to do."""


def run(settings: Settings, make_writer: MakeWriter = Writer) -> int:
    """Check the writer's access and its topics, serve /metrics, /healthz and /readyz, and
    run the faust worker until it stops; returns its exit code. Raises CannotStart."""
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
        raise CannotStart(str(exc)) from None
    missing = wait_for_topics(settings, [settings.recovery_topic, settings.late_topic])
    if missing:
        raise CannotStart(f"topic(s) {', '.join(missing)} not found on {settings.bootstrap_servers}; create them "
                          "with `slipguard topics create`")
    app, writer = build_app(settings, make_writer)
    tune_gc()
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
