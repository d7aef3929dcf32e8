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
    wrapped_signing_key BLOB NOT NULL,
    wrapped_hmac_key BLOB NOT NULL,
    public_key BLOB NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TRIGGER audit_checkpoints_no_update
BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: UPDATE on audit_checkpoints refused');
END;

CREATE TRIGGER audit_checkpoints_no_delete
BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: DELETE on audit_checkpoints refused');
END;

CREATE TRIGGER audit_keys_no_update
BEFORE UPDATE ON audit_keys
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: UPDATE on audit_keys refused');
END;

CREATE TRIGGER audit_keys_no_delete
BEFORE DELETE ON audit_keys
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: DELETE on audit_keys refused');
END;
