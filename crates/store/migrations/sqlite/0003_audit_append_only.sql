-- The audit log is append-only in the database as well as in the service (defence in depth:
-- whoever can write the database file can drop these triggers; the hash chain and signed
-- checkpoints are what reveal tampering). SQLite has no TRUNCATE; DELETE without WHERE fires
-- the delete trigger too, since a trigger disables the truncate optimisation.
CREATE TRIGGER audit_events_no_update
BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: UPDATE on audit_events refused');
END;

CREATE TRIGGER audit_events_no_delete
BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: DELETE on audit_events refused');
END;
