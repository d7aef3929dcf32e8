-- Sovra core schema (PostgreSQL). Key material and KEKs are stored only wrapped.
CREATE TABLE seal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    kind TEXT NOT NULL,
    shares BIGINT NOT NULL,
    threshold BIGINT NOT NULL,
    wrapped_root_key BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE orgs (
    id TEXT PRIMARY KEY,
    active_kek_version BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE org_keks (
    org_id TEXT NOT NULL REFERENCES orgs(id),
    version BIGINT NOT NULL,
    wrapped_kek BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, version)
);

CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    key_type TEXT NOT NULL,
    description TEXT,
    state TEXT NOT NULL,
    latest_version BIGINT NOT NULL,
    min_decryption_version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    rotated_at BIGINT,
    deletion_date BIGINT,
    UNIQUE (org_id, owner, name)
);

CREATE TABLE key_versions (
    key_id TEXT NOT NULL REFERENCES keys(id) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    kek_version BIGINT NOT NULL,
    wrapped_material BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, version)
);

CREATE INDEX key_versions_by_kek ON key_versions (kek_version);
CREATE INDEX keys_by_deletion ON keys (state, deletion_date);
