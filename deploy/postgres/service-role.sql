-- Sovra on PostgreSQL: the service role the server logs in as (see docs/postgres.md).
--
-- Run as the owner of the Sovra tables (the role that runs `sovra db migrate`), connected to
-- the Sovra database, after the migrations and again after every upgrade (new tables get no
-- grant until this runs):
--
--   psql "postgres://sovra_owner@db.internal/sovra" -v ON_ERROR_STOP=1 -f deploy/postgres/service-role.sql
--
-- Safe to run twice, and concurrently in different databases of one cluster.
-- The role gets no password here; set one separately (psql: \password sovra_service).
--
-- What the service role may do:
--   * SELECT, INSERT, UPDATE, DELETE on the Sovra tables;
--   * only SELECT and INSERT on the append-only audit tables (every table guarded by a trigger
--     calling sovra_refuse_audit_change()): no UPDATE, DELETE or TRUNCATE;
--   * only SELECT on _sqlx_migrations (the server checks that nothing is pending);
--   * it owns nothing, so it can neither alter nor drop the tables or their triggers.

-- Roles are global to the cluster: create it only if missing. Two sessions creating it at
-- once can collide on the catalog's unique index instead of raising duplicate_object.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sovra_service') THEN
        CREATE ROLE sovra_service LOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;
END;
$$;

DO $$
DECLARE
    tbl regclass;
BEGIN
    -- A superuser or a member of the owner bypasses every grant below.
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'sovra_service' AND rolsuper) THEN
        RAISE EXCEPTION 'sovra_service is a superuser: it must be an ordinary role';
    END IF;
    IF pg_has_role('sovra_service', current_user, 'MEMBER') THEN
        RAISE EXCEPTION 'sovra_service is a member of the table owner %: it must not be',
            current_user;
    END IF;

    EXECUTE format('GRANT CONNECT ON DATABASE %I TO sovra_service', current_database());
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO sovra_service', current_schema());
    EXECUTE format(
        'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO sovra_service',
        current_schema());
    EXECUTE format(
        'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO sovra_service', current_schema());

    -- The migration bookkeeping is read-only for the service.
    IF to_regclass('_sqlx_migrations') IS NOT NULL THEN
        REVOKE ALL ON _sqlx_migrations FROM sovra_service;
        GRANT SELECT ON _sqlx_migrations TO sovra_service;
    END IF;

    -- Append-only tables: found through their triggers, so a later audit table is covered
    -- as soon as its migration adds the trigger.
    FOR tbl IN
        SELECT DISTINCT t.tgrelid::regclass
        FROM pg_trigger t
        JOIN pg_proc p ON p.oid = t.tgfoid
        WHERE p.proname = 'sovra_refuse_audit_change'
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM sovra_service', tbl);
        EXECUTE format('GRANT SELECT, INSERT ON %s TO sovra_service', tbl);
    END LOOP;
END;
$$;
