-- Organizations become records an operator manages (display name, status), and every
-- principal a stored identity of its org. Orgs created implicitly before this migration keep
-- their id as display name and stay active. Identities are created by Sovra (each row with its
-- MAC, docs/formats.md section 6), so no unsigned identity row ever exists.
ALTER TABLE orgs ADD COLUMN display_name TEXT NOT NULL DEFAULT '';
ALTER TABLE orgs ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
UPDATE orgs SET display_name = id WHERE display_name = '';

CREATE TABLE identities (
    org_id TEXT NOT NULL REFERENCES orgs(id),
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    roles TEXT NOT NULL,
    status TEXT NOT NULL,
    auth_source TEXT NOT NULL,
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER,
    revision INTEGER NOT NULL,
    row_mac BLOB NOT NULL,
    PRIMARY KEY (org_id, id)
);
