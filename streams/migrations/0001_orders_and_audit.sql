-- The orders table as the order service writes it, plus the columns of recovery; the
-- audit of every recovery record; late orders waiting to reconcile a recovered row.
CREATE TABLE orders (
    order_id          text PRIMARY KEY,
    user_id           text NOT NULL,
    amount            numeric(16, 4) NOT NULL CHECK (amount > 0),
    currency          char(3) NOT NULL,
    created_at        timestamptz NOT NULL,
    metadata          jsonb,
    source            text NOT NULL DEFAULT 'order_service' CHECK (source IN ('order_service', 'recovery')),
    payment_id        text,
    recovery_id       uuid UNIQUE,
    recovered_at      timestamptz,
    reconciled_at     timestamptz,
    reconciled_order  jsonb,
    CHECK (source = 'order_service' OR (payment_id IS NOT NULL AND recovery_id IS NOT NULL AND recovered_at IS NOT NULL))
);

CREATE TABLE recovery_audit (
    id                bigserial PRIMARY KEY,
    recovery_id       uuid NOT NULL UNIQUE,
    order_id          text NOT NULL,
    payment_id        text NOT NULL,
    outcome           text NOT NULL CHECK (outcome IN ('inserted', 'already_present', 'rejected')),
    reason            text,
    deadline          timestamptz NOT NULL,
    detected_at       timestamptz NOT NULL,
    written_at        timestamptz NOT NULL DEFAULT now(),
    source_topic      text NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL
);
CREATE INDEX recovery_audit_order_id ON recovery_audit (order_id);

CREATE TABLE late_orders (
    recovery_id       uuid PRIMARY KEY,
    order_id          text NOT NULL,
    payment_id        text NOT NULL,
    real_order        jsonb NOT NULL,
    lateness_seconds  double precision NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now()
);
