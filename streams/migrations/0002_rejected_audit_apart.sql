-- A rejected recovery's recovery_id is only what the record claims. Unique over every
-- audit row, a forged record naming a real recovery's id (rejected: a bad signature, a
-- failed status, another payment) took the audit row the real recovery is owed, which
-- was then silently dropped. So: one written outcome (inserted, already_present) per
-- recovery_id, as before; a rejected record is audited once per record, keyed by where it
-- was read (a redelivery adds nothing) and the id it claims. A forged record can then
-- neither block nor overwrite the real one's rows.
ALTER TABLE recovery_audit DROP CONSTRAINT recovery_audit_recovery_id_key;
CREATE UNIQUE INDEX recovery_audit_written_once ON recovery_audit (recovery_id) WHERE outcome <> 'rejected';
CREATE UNIQUE INDEX recovery_audit_rejected_once
    ON recovery_audit (source_topic, source_partition, source_offset, recovery_id) WHERE outcome = 'rejected';
