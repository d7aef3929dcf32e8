-- Grants: an identity or a role of a key's org may do some operations on the key, optionally
-- only under an encryption context (equals / subset, as AWS KMS grants), until it expires or
-- is revoked (the row is deleted). Every row carries a MAC (docs/formats.md section 6): a
-- grant an insider writes gives nothing.
CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    key_id TEXT NOT NULL REFERENCES keys(id) ON DELETE CASCADE,
    grantee_type TEXT NOT NULL,
    grantee TEXT NOT NULL,
    operations TEXT NOT NULL,
    constraint_kind TEXT,
    constraint_context TEXT,
    expires_at BIGINT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    row_mac BYTEA NOT NULL
);

CREATE INDEX grants_by_key ON grants (org_id, key_id);

-- Other nodes cache a key's grants with the key: a grant made or revoked anywhere reaches
-- them at commit as a change of its key.
CREATE FUNCTION sovra_notify_grant_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sovra_key_changed', COALESCE(NEW.key_id, OLD.key_id));
    RETURN NULL;
END
$$;

CREATE TRIGGER grants_notify_change
    AFTER INSERT OR DELETE ON grants
    FOR EACH ROW EXECUTE FUNCTION sovra_notify_grant_change();
