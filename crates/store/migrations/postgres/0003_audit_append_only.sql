-- The audit log is append-only in the database as well as in the service: these triggers
-- refuse UPDATE, DELETE and TRUNCATE for every role. The table owner (or a superuser) can still
-- disable them, so they are defence in depth; the hash chain and signed checkpoints are what
-- reveal tampering. The service role gets no UPDATE/DELETE/TRUNCATE grant and does not own the
-- table (deploy/postgres/service-role.sql), so it can neither change rows nor drop the triggers.
--
-- Generic on purpose: every append-only table reuses this function by name, and the
-- service-role grant script finds those tables through their triggers on it.
CREATE FUNCTION sovra_refuse_audit_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME;
END;
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION sovra_refuse_audit_change();

-- TRUNCATE fires no row triggers, so it needs its own statement-level one.
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION sovra_refuse_audit_change();
