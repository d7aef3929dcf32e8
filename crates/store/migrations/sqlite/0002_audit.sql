-- Audit chain: one row per event, linked by prev_hash; seq is the primary key, so two writers
-- can never both append the same sequence number (no fork).
CREATE TABLE audit_events (
    seq BIGINT PRIMARY KEY,
    time_ms BIGINT NOT NULL,
    org_id TEXT,
    actor TEXT NOT NULL,
    auth_method TEXT NOT NULL,
    cert_fingerprint TEXT,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    outcome TEXT NOT NULL,
    error_code TEXT,
    request_id TEXT NOT NULL,
    source TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
