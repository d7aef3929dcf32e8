-- Every node caches key metadata for a moment; this tells all of them at commit when a key
-- changes or is deleted, so a disable, rotation or scheduled deletion through one node takes
-- effect on the others at once (the cache's age bound covers a missed notification).
CREATE FUNCTION sovra_notify_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sovra_key_changed', OLD.id);
    RETURN NULL;
END
$$;

CREATE TRIGGER keys_notify_change
    AFTER UPDATE OR DELETE ON keys
    FOR EACH ROW EXECUTE FUNCTION sovra_notify_key_change();
