/* src/sql/apiary--0.6--0.7.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.7'" to load this file. \quit

/*
 * A registration inserted for a function that already has one replaces it,
 * and takes its name from a declared registration of another function.
 * (apiary_register and declarative registration check the name first, so
 * only a restore, or a superuser's own INSERT, takes a name this way.)
 *
 * This is for restores.  pg_dump keeps apiary.functions (extension
 * configuration), and a restore creates the functions before it copies the
 * table's rows: a function with SET apiary.kind registers itself when it
 * is created, and a copied row for it (which may carry the settings given
 * to apiary_register), or a copied row under the name it took, clashed
 * with that registration, and the whole table was lost.  Now the copied
 * rows win.  The function's row is updated in place, not deleted and
 * inserted, so that a DROP FUNCTION waiting on it still removes it.
 */
CREATE FUNCTION apiary.registration_replaces() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM apiary.functions WHERE name = NEW.name AND fn <> NEW.fn AND declared;
    UPDATE apiary.functions
       SET name = NEW.name, kind = NEW.kind, max_attempts = NEW.max_attempts,
           timeout = NEW.timeout, declared = NEW.declared,
           registered_by = NEW.registered_by, registered_at = NEW.registered_at
     WHERE fn = NEW.fn;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION apiary.registration_replaces() FROM PUBLIC;
CREATE TRIGGER registration_replaces
    BEFORE INSERT ON apiary.functions
    FOR EACH ROW EXECUTE FUNCTION apiary.registration_replaces();
-- also under session_replication_role = replica, like the event triggers
ALTER TABLE apiary.functions ENABLE ALWAYS TRIGGER registration_replaces;

/*
 * Declarative registration also sees CREATE PROCEDURE (a procedure cannot
 * be registered: SET apiary.kind on one is an error), ALTER PROCEDURE and
 * ALTER ROUTINE, which changes a function's SET clause as ALTER FUNCTION
 * does.
 */
DROP EVENT TRIGGER apiary_ddl_command_end;
CREATE EVENT TRIGGER apiary_ddl_command_end ON ddl_command_end
    WHEN TAG IN ('CREATE FUNCTION', 'ALTER FUNCTION', 'CREATE PROCEDURE',
                 'ALTER PROCEDURE', 'ALTER ROUTINE')
    EXECUTE FUNCTION apiary.on_ddl_command_end();
ALTER EVENT TRIGGER apiary_ddl_command_end ENABLE ALWAYS;

/*
 * DROP EXTENSION apiary first stands the executors down (launcher.c): a
 * task running while the drop locks apiary's tables one by one could
 * deadlock with it.
 */
CREATE FUNCTION apiary.on_ddl_command_start() RETURNS event_trigger
    AS 'MODULE_PATHNAME', 'apiary_on_ddl_command_start'
    LANGUAGE C;
REVOKE ALL ON FUNCTION apiary.on_ddl_command_start() FROM PUBLIC;
CREATE EVENT TRIGGER apiary_ddl_command_start ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION')
    EXECUTE FUNCTION apiary.on_ddl_command_start();
ALTER EVENT TRIGGER apiary_ddl_command_start ENABLE ALWAYS;

-- 0.6 let a procedure declare a kind, which registered nothing; altering
-- one is now an error until the clause goes.
DO $$
DECLARE
    p pg_catalog.text;
BEGIN
    FOR p IN SELECT oid::pg_catalog.regprocedure::pg_catalog.text FROM pg_catalog.pg_proc
              WHERE prokind OPERATOR(pg_catalog.<>) 'f'
                AND EXISTS (SELECT FROM pg_catalog.unnest(proconfig) c
                             WHERE pg_catalog.starts_with(c, 'apiary.kind='))
    LOOP
        RAISE WARNING 'procedure % declares apiary.kind, which registers nothing', p
            USING HINT = pg_catalog.format('ALTER PROCEDURE %s RESET apiary.kind', p);
    END LOOP;
END $$;
