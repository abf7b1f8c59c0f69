"""Prometheus metrics of every worker: names slipguard_*, base units, no id labels.

Hot loops count locally and add to these once per batch.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# ---------------------------------------------------------------- join
JOIN_RECORDS = Counter("slipguard_join_records_total", "Input records consumed by the join", ["topic"])
JOIN_MATCHED = Counter("slipguard_join_matched_total", "Payments matched with their order")
JOIN_RECOVERED = Counter("slipguard_join_recovered_total", "Payments emitted to the recovery topic")
JOIN_LATE = Counter("slipguard_join_late_orders_total", "Late orders emitted")
JOIN_ANOMALIES = Counter("slipguard_join_anomalies_total", "Anomalies emitted", ["kind"])
JOIN_DUPLICATES = Counter("slipguard_join_duplicates_total", "Repeated payment or order events dropped")
DLQ_RECORDS = Counter("slipguard_dlq_records_total", "Records sent to the DLQ", ["worker", "reason"])
JOIN_PENDING_PAYMENTS = Gauge("slipguard_join_pending_payments", "Payments waiting for their order")
JOIN_PENDING_ORDERS = Gauge("slipguard_join_buffered_orders", "Orders kept for a payment to come or to spot duplicates")
JOIN_RECOVERED_REMEMBERED = Gauge("slipguard_join_recovered_remembered",
                                  "Recovered payments remembered for late orders")
JOIN_OLDEST_PENDING = Gauge("slipguard_join_oldest_pending_payment_age_seconds",
                            "Wall clock minus event time of the oldest pending payment")
JOIN_DETECTION_LATENCY = Histogram(
    "slipguard_join_detection_latency_seconds", "Emit time minus the payment's deadline",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 7.5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600),
)
JOIN_RESTORE_SECONDS = Histogram("slipguard_join_state_restore_seconds", "Time to restore one partition's state",
                                 buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120))
JOIN_CHANGELOG_RECORDS = Counter("slipguard_join_changelog_records_total", "State changes written to the changelog")
JOIN_HOLD_RELEASED = Counter("slipguard_join_hold_released_total",
                             "Records fed ahead of the other partition of their pair because a hold limit was reached "
                             "(HOLD_MAX_SECONDS with nothing known to be left to fetch there, or HOLD_MAX_RECORDS): "
                             "they become pending state", ["limit"])
JOIN_STALLS = Counter("slipguard_join_stalls_total",
                      "Times the join's loop stood still longer than stall_s (GRACE/2, 0.2-1 s) between two "
                      "consumes (a pause, a slow commit): each makes the ends of partition seen before count only "
                      "once confirmed again; a steady rate says every step is that slow")
JOIN_FETCH_RESTARTS = Counter("slipguard_join_fetch_restarts_total",
                              "Partitions whose fetch had not started 5 s after their restore, assigned again "
                              "(KIP-848; classic: an ERROR line, read after the next rebalance) "
                              "(librdkafka issue 2190: an assign and a pause in quick succession; an offset lookup "
                              "that never answered); each would otherwise never be read")
JOIN_STAMPED_AHEAD = Counter("slipguard_join_records_stamped_ahead_total",
                             "Input records stamped more than GRACE ahead of this worker's clock (up to MAX_FUTURE; "
                             "further ahead they go to the DLQ): a producer with a fast clock", ["topic"])
JOIN_INTERNAL_ERRORS = Counter("slipguard_join_internal_errors_total",
                               "Valid input records the join failed on (a defect of slipguard): each went to the "
                               "DLQ with the error, and its partition moved on")
JOIN_ORDER_TIMEOUT = Gauge("slipguard_join_order_timeout_seconds",
                           "The join's ORDER_TIMEOUT (alert rules compare lag in seconds with it)", ["group"])
JOIN_COMMITS = Counter("slipguard_join_commits_total", "Commits (transactions or offset commits)", ["outcome"])
ASSIGNED_PARTITIONS = Gauge("slipguard_assigned_partitions", "Partitions assigned to this worker", ["group", "topic"])
REBALANCES = Counter("slipguard_rebalances_total", "Rebalance events seen by this worker", ["group", "kind"])

# ---------------------------------------------------------------- recovery writer
WRITER_ROWS = Counter("slipguard_writer_rows_total", "Recovery records written, by outcome", ["outcome"])
WRITER_BATCH_SECONDS = Histogram("slipguard_writer_batch_seconds", "Time to write and acknowledge one batch",
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
WRITER_DB_ERRORS = Counter("slipguard_writer_db_errors_total", "Database errors seen by the writer")
WRITER_RETRIES = Counter("slipguard_writer_retries_total", "Batch writes retried after a database error")
