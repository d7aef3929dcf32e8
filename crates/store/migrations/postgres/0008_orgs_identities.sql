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
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT,
    revision BIGINT NOT NULL,
    row_mac BYTEA NOT NULL,
    PRIMARY KEY (org_id, id)
);

-- A suspension or an identity's change through one node reaches the others' admission caches
-- at commit, on the channel of key changes (payloads `org:ID`, `identity:ORG:ID`).
CREATE FUNCTION sovra_notify_org_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sovra_key_changed', 'org:' || OLD.id);
    RETURN NULL;
END
$$;

CREATE TRIGGER orgs_notify_change
    AFTER UPDATE OR DELETE ON orgs
    FOR EACH ROW EXECUTE FUNCTION sovra_notify_org_change();

CREATE FUNCTION sovra_notify_identity_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- last_seen_at decides nothing: its updates need not empty other nodes' caches.
    IF TG_OP = 'UPDATE' AND NEW.revision = OLD.revision THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('sovra_key_changed', 'identity:' || OLD.org_id || ':' || OLD.id);
    RETURN NULL;
END
$$;

CREATE TRIGGER identities_notify_change
    AFTER UPDATE OR DELETE ON identities
    FOR EACH ROW EXECUTE FUNCTION sovra_notify_identity_change();
