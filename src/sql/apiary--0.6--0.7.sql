/* src/sql/apiary--0.6--0.7.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.7'" to load this file. \quit

/*
 * A registration inserted for a function that already has one replaces it.
 *
 * This is for restores.  pg_dump keeps apiary.functions (extension
 * configuration), and a restore creates the functions before it copies the
 * table's rows: a function with SET apiary.kind is registered again by its
 * CREATE FUNCTION, and the copied row for it, which may carry settings
 * given to apiary_register, then clashed with that registration and the
 * whole table was lost.  Now the copied row takes its place.
 * apiary_register and declarative registration go through it too: they
 * insert the whole registration, having checked the name first.
 */
CREATE FUNCTION apiary.registration_replaces() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM apiary.functions WHERE fn = NEW.fn;
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
