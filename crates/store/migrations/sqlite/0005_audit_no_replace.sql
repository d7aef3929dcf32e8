-- REPLACE (`INSERT OR REPLACE`, `REPLACE INTO`) deletes the row it conflicts with without
-- firing DELETE triggers (unless the connection turned on recursive_triggers, which an insider's
-- own connection would not), so 0003 and 0004 did not stop it from rewriting an audit row. An
-- INSERT that lands on an existing row is refused before any conflict resolution runs; that
-- covers REPLACE, `INSERT OR IGNORE` and upserts alike. The store's own inserts never target an
-- existing row (appends check the head first; checkpoints skip a sequence already signed).
CREATE TRIGGER audit_events_no_replace
BEFORE INSERT ON audit_events
WHEN EXISTS (SELECT 1 FROM audit_events WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: INSERT over an existing row of audit_events refused');
END;

CREATE TRIGGER audit_checkpoints_no_replace
BEFORE INSERT ON audit_checkpoints
WHEN EXISTS (SELECT 1 FROM audit_checkpoints WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: INSERT over an existing row of audit_checkpoints refused');
END;

CREATE TRIGGER audit_keys_no_replace
BEFORE INSERT ON audit_keys
WHEN EXISTS (SELECT 1 FROM audit_keys WHERE id = NEW.id)
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: INSERT over an existing row of audit_keys refused');
END;
