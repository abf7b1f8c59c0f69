-- A late order names its order and the payment's recovery_id. Keyed by recovery_id alone,
-- a late order of another order under that id (not something the join emits: a forged
-- or corrupted record) took the key the real late order needed, and reconciled the
-- recovered row with the wrong order. Keyed by both, the real one is still stored, and
-- only a late order of the row's own order reconciles it (store.RECONCILE).
ALTER TABLE late_orders DROP CONSTRAINT late_orders_pkey, ADD PRIMARY KEY (recovery_id, order_id);
