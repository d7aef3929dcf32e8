-- Keyed hashes of sensitive request values (JSON object name -> hex HMAC), NULL when none.
ALTER TABLE audit_events ADD COLUMN hashed TEXT;
CREATE INDEX audit_events_org_seq ON audit_events (org_id, seq);

-- Signed checkpoints over the chain head; one per sequence (two nodes may sign the same head).
CREATE TABLE audit_checkpoints (
    seq BIGINT PRIMARY KEY,
    head TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    signature TEXT NOT NULL
);

-- The deployment's audit keys, wrapped by the root key; one row.
CREATE TABLE audit_keys (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    wrapped_signing_key BYTEA NOT NULL,
    wrapped_hmac_key BYTEA NOT NULL,
    public_key BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

-- Checkpoints and the audit keys are append-only like the events (see 0003).
CREATE TRIGGER audit_checkpoints_append_only
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION sovra_refuse_audit_change();
CREATE TRIGGER audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION sovra_refuse_audit_change();
CREATE TRIGGER audit_keys_append_only
    BEFORE UPDATE OR DELETE ON audit_keys
    FOR EACH ROW EXECUTE FUNCTION sovra_refuse_audit_change();
CREATE TRIGGER audit_keys_no_truncate
    BEFORE TRUNCATE ON audit_keys
    FOR EACH STATEMENT EXECUTE FUNCTION sovra_refuse_audit_change();
