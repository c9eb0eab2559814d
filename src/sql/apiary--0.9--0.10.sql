/* src/sql/apiary--0.9--0.10.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.10'" to load this file. \quit

/*
 * pg_upgrade.  The registry named each function by regprocedure, its OID,
 * and pg_upgrade refuses a cluster with such a column: function OIDs are
 * not kept by an upgrade.  A registration now names its function by its
 * schema-qualified signature, as pg_identify_object gives it
 * ("public.reserve(integer,integer)"), which pg_upgrade, pg_dump and
 * streaming replication all carry over as they are.  Renaming the
 * function, its schema or the types of its arguments updates the
 * signature (the event triggers below, registry.c).
 *
 * A registration whose function was dropped without apiary seeing it
 * names nothing that can be looked up: it is removed, with a warning.
 */
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT name FROM apiary.functions
              WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_proc p
                                 WHERE p.oid OPERATOR(pg_catalog.=) fn::pg_catalog.oid)
    LOOP
        RAISE WARNING 'removing the registration of "%", whose function no longer exists', r.name;
        DELETE FROM apiary.functions WHERE name OPERATOR(pg_catalog.=) r.name;
    END LOOP;
END $$;

ALTER TABLE apiary.functions ALTER COLUMN fn TYPE pg_catalog.text
    USING (pg_catalog.pg_identify_object('pg_catalog.pg_proc'::pg_catalog.regclass,
                                         fn, 0)).identity;
COMMENT ON COLUMN apiary.functions.fn IS
    'the function, by its schema-qualified signature (kept current through renames; fn::regprocedure gives its OID)';

/*
 * A row inserted names its function in any form regprocedure reads, under
 * the inserting session's search_path (a restore of a dump made before
 * 0.10 gives the regprocedure's text), and is stored in the one form the
 * registry compares.  Then, as before, it replaces a registration of the
 * same function (see 0.7).  Without a search_path of its own, for that
 * first step, so every name in it is qualified.
 */
CREATE OR REPLACE FUNCTION apiary.registration_replaces() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    f pg_catalog.regprocedure := pg_catalog.to_regprocedure(NEW.fn);
BEGIN
    IF f IS NULL THEN
        RAISE EXCEPTION 'function % does not exist', NEW.fn
            USING ERRCODE = 'undefined_function',
                  HINT = 'Name the function with its argument types, as in public.reserve(integer,integer).';
    END IF;
    NEW.fn := (pg_catalog.pg_identify_object('pg_catalog.pg_proc'::pg_catalog.regclass, f, 0)).identity;
    DELETE FROM apiary.functions
     WHERE name OPERATOR(pg_catalog.=) NEW.name AND fn OPERATOR(pg_catalog.<>) NEW.fn AND declared;
    UPDATE apiary.functions
       SET name = NEW.name, kind = NEW.kind, max_attempts = NEW.max_attempts,
           timeout = NEW.timeout, declared = NEW.declared,
           registered_by = NEW.registered_by, registered_at = NEW.registered_at
     WHERE fn OPERATOR(pg_catalog.=) NEW.fn;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;

/*
 * Renames.  Before a RENAME or SET SCHEMA, apiary notes which function
 * each registration names; after it, a registration whose function's
 * signature changed is updated.  Both triggers look at the statement
 * first and do nothing for any other ALTER.
 */
CREATE FUNCTION apiary.on_rename_start() RETURNS event_trigger
    AS 'MODULE_PATHNAME', 'apiary_on_rename_start'
    LANGUAGE C;
REVOKE ALL ON FUNCTION apiary.on_rename_start() FROM PUBLIC;
CREATE EVENT TRIGGER apiary_rename_start ON ddl_command_start
    WHEN TAG IN ('ALTER FUNCTION', 'ALTER PROCEDURE', 'ALTER ROUTINE', 'ALTER SCHEMA',
                 'ALTER TYPE', 'ALTER DOMAIN', 'ALTER TABLE', 'ALTER VIEW',
                 'ALTER MATERIALIZED VIEW', 'ALTER FOREIGN TABLE', 'ALTER SEQUENCE',
                 'ALTER EXTENSION')
    EXECUTE FUNCTION apiary.on_rename_start();
ALTER EVENT TRIGGER apiary_rename_start ENABLE ALWAYS;

DROP EVENT TRIGGER apiary_ddl_command_end;
CREATE EVENT TRIGGER apiary_ddl_command_end ON ddl_command_end
    WHEN TAG IN ('CREATE FUNCTION', 'CREATE PROCEDURE',
                 'ALTER FUNCTION', 'ALTER PROCEDURE', 'ALTER ROUTINE', 'ALTER SCHEMA',
                 'ALTER TYPE', 'ALTER DOMAIN', 'ALTER TABLE', 'ALTER VIEW',
                 'ALTER MATERIALIZED VIEW', 'ALTER FOREIGN TABLE', 'ALTER SEQUENCE',
                 'ALTER EXTENSION')
    EXECUTE FUNCTION apiary.on_ddl_command_end();
ALTER EVENT TRIGGER apiary_ddl_command_end ENABLE ALWAYS;
