/* src/sql/apiary--0.9--0.10.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.10'" to load this file. \quit

/*
 * pg_upgrade.  The registry named each function by regprocedure, and
 * pg_upgrade refuses a cluster with such a column: function OIDs are not
 * kept by an upgrade.  A registration now keeps its function twice:
 *
 *	- fn_oid, a plain oid (which pg_upgrade accepts), names it inside this
 *	  cluster, as the regprocedure did: it follows renames by itself, and
 *	  every lookup and comparison uses it;
 *	- fn, its schema-qualified signature as pg_identify_object gives it
 *	  ("public.reserve(integer,integer)"), names it in any cluster.
 *
 * After pg_upgrade the OIDs are another cluster's: apiary.registry_cluster
 * holds the system identifier of the cluster they belong to (pg_upgrade
 * copies it with the rest, and the new cluster's differs), and until
 * apiary.adopt_registrations() has resolved every signature again in the
 * new cluster, lookups resolve the signature instead of trusting the OID.
 * A restore inserts rows, and the insert trigger resolves each one's
 * signature.  Signatures are brought up to date after every rename
 * (apiary.refresh_signatures, from the event trigger below) and by the
 * launcher once a minute.
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

-- signatures are compared as text: never in the quoted-everything form
SELECT pg_catalog.set_config('quote_all_identifiers', 'off', true);
ALTER TABLE apiary.functions ADD COLUMN fn_oid pg_catalog.oid UNIQUE;
UPDATE apiary.functions SET fn_oid = fn::pg_catalog.oid;
ALTER TABLE apiary.functions DROP CONSTRAINT functions_fn_key;
ALTER TABLE apiary.functions ALTER COLUMN fn TYPE pg_catalog.text
    USING (pg_catalog.pg_identify_object('pg_catalog.pg_proc'::pg_catalog.regclass,
                                         fn, 0)).identity;
COMMENT ON COLUMN apiary.functions.fn IS
    'the function, by its schema-qualified signature: what names it in another cluster (pg_upgrade, a restore)';
COMMENT ON COLUMN apiary.functions.fn_oid IS
    'the function in this cluster (fn_oid::regprocedure); NULL when its signature named no function here';

CREATE FUNCTION apiary.system_identifier() RETURNS pg_catalog.int8
    AS 'MODULE_PATHNAME', 'apiary_system_identifier'
    LANGUAGE C STABLE PARALLEL SAFE;
CREATE TABLE apiary.registry_cluster (system_identifier pg_catalog.int8 NOT NULL);
COMMENT ON TABLE apiary.registry_cluster IS
    'the cluster whose OIDs apiary.functions.fn_oid holds (its system identifier)';
INSERT INTO apiary.registry_cluster VALUES (apiary.system_identifier());
REVOKE ALL ON FUNCTION apiary.system_identifier() FROM PUBLIC;
REVOKE ALL ON apiary.registry_cluster FROM PUBLIC;

/*
 * The function a signature names, or NULL: also when one of its types or
 * its schema is gone, which to_regprocedure raises.  Under the caller's
 * search_path (a row inserted by hand may name an unqualified function),
 * so every name here is qualified.
 */
CREATE FUNCTION apiary.resolve_signature(signature pg_catalog.text) RETURNS pg_catalog.oid
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN pg_catalog.to_regprocedure(signature);
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION apiary.resolve_signature(pg_catalog.text) FROM PUBLIC;

/*
 * In a cluster other than the one the OIDs belong to (after pg_upgrade),
 * resolve every registration's signature again, and say so (true).  One
 * that names nothing here keeps a NULL fn_oid, with a warning: calling it
 * says so.
 */
CREATE FUNCTION apiary.adopt_registrations() RETURNS pg_catalog.bool
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET quote_all_identifiers = off AS $$
DECLARE
    r record;
    f oid;
BEGIN
    IF (SELECT system_identifier FROM apiary.registry_cluster) = apiary.system_identifier() THEN
        RETURN false;
    END IF;
    LOCK TABLE apiary.functions IN SHARE ROW EXCLUSIVE MODE;
    LOCK TABLE apiary.registry_cluster IN EXCLUSIVE MODE;
    IF (SELECT system_identifier FROM apiary.registry_cluster) = apiary.system_identifier() THEN
        RETURN false;
    END IF;
    UPDATE apiary.functions SET fn_oid = NULL;
    FOR r IN SELECT name, fn FROM apiary.functions ORDER BY name LOOP
        f := apiary.resolve_signature(r.fn);
        IF f IS NULL OR EXISTS (SELECT FROM apiary.functions WHERE fn_oid = f) THEN
            RAISE WARNING 'the function registered as "%" (%) does not exist in this cluster', r.name, r.fn
                USING HINT = 'Register the function again with apiary_register.';
        ELSE
            UPDATE apiary.functions SET fn_oid = f WHERE name = r.name;
        END IF;
    END LOOP;
    UPDATE apiary.registry_cluster SET system_identifier = apiary.system_identifier();
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION apiary.adopt_registrations() FROM PUBLIC;

/*
 * Bring the signatures up to date with the functions' names, their
 * schemas' and their types'.  Reads first: an idle transaction that made a
 * registration holds the table against writers, and a rename that changes
 * no registered function must not wait for it.
 */
CREATE FUNCTION apiary.refresh_signatures() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET quote_all_identifiers = off AS $$
BEGIN
    IF (SELECT system_identifier FROM apiary.registry_cluster) <> apiary.system_identifier() THEN
        RETURN;     -- the OIDs are another cluster's: adopt_registrations first
    END IF;
    IF NOT EXISTS (SELECT FROM apiary.functions
                    WHERE (pg_identify_object('pg_proc'::regclass, fn_oid, 0)).identity <> fn) THEN
        RETURN;
    END IF;
    -- as a registration does, and before it: a transaction that goes on
    -- to register must not be left holding a weaker lock
    LOCK TABLE apiary.functions IN SHARE ROW EXCLUSIVE MODE;
    UPDATE apiary.functions SET fn = (pg_identify_object('pg_proc'::regclass, fn_oid, 0)).identity
     WHERE (pg_identify_object('pg_proc'::regclass, fn_oid, 0)).identity <> fn;
END $$;
REVOKE ALL ON FUNCTION apiary.refresh_signatures() FROM PUBLIC;

/*
 * A row inserted (by a restore, say) names its function by signature, in
 * any form regprocedure reads, a dump made before 0.10 included: the
 * function is found again by it, whatever fn_oid the row brings, and the
 * signature is stored in the one form the registry writes.  A row whose
 * signature names no function is skipped with a warning, so that a
 * restore keeps the rest.  Then, as before, it replaces a registration of
 * the same function (see 0.7).  Without a search_path of its own, for the
 * first step, so every name in it is qualified, operators included (and
 * no IS DISTINCT FROM, whose operator cannot be).
 */
CREATE OR REPLACE FUNCTION apiary.registration_replaces() RETURNS trigger
LANGUAGE plpgsql SET quote_all_identifiers = off AS $$
BEGIN
    -- the rows below compare OIDs: of this cluster (pg_upgrade)
    PERFORM apiary.adopt_registrations();
    -- a registration made here brings its function (fn_oid) and signature
    -- together; a restored row, another database's OID: find it again
    IF NEW.fn_oid IS NULL
       OR NOT COALESCE((pg_catalog.pg_identify_object('pg_catalog.pg_proc'::pg_catalog.regclass,
                                                      NEW.fn_oid, 0)).identity
                       OPERATOR(pg_catalog.=) NEW.fn, false) THEN
        NEW.fn_oid := apiary.resolve_signature(NEW.fn);
    END IF;
    IF NEW.fn_oid IS NULL THEN
        RAISE WARNING 'skipping the registration of "%": function % does not exist', NEW.name, NEW.fn
            USING HINT = 'Register the function with apiary_register once it exists.';
        RETURN NULL;
    END IF;
    NEW.fn := (pg_catalog.pg_identify_object('pg_catalog.pg_proc'::pg_catalog.regclass,
                                             NEW.fn_oid, 0)).identity;
    DELETE FROM apiary.functions
     WHERE name OPERATOR(pg_catalog.=) NEW.name
       AND fn_oid OPERATOR(pg_catalog.<>) NEW.fn_oid AND declared;
    UPDATE apiary.functions
       SET name = NEW.name, fn = NEW.fn, kind = NEW.kind, max_attempts = NEW.max_attempts,
           timeout = NEW.timeout, declared = NEW.declared,
           registered_by = NEW.registered_by, registered_at = NEW.registered_at
     WHERE fn_oid OPERATOR(pg_catalog.=) NEW.fn_oid;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;

/*
 * Renames: before a RENAME or SET SCHEMA, the ddl_command_start trigger
 * (which also stands the executors down for DROP EXTENSION) adopts the
 * registrations if they are another cluster's, while their signatures
 * still name what they named.
 */
DROP EVENT TRIGGER apiary_ddl_command_start;
CREATE EVENT TRIGGER apiary_ddl_command_start ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION',
                 'ALTER FUNCTION', 'ALTER PROCEDURE', 'ALTER ROUTINE', 'ALTER SCHEMA',
                 'ALTER TYPE', 'ALTER DOMAIN', 'ALTER TABLE', 'ALTER INDEX', 'ALTER VIEW',
                 'ALTER MATERIALIZED VIEW', 'ALTER FOREIGN TABLE', 'ALTER SEQUENCE',
                 'ALTER EXTENSION')
    EXECUTE FUNCTION apiary.on_ddl_command_start();
ALTER EVENT TRIGGER apiary_ddl_command_start ENABLE ALWAYS;

/*
 * Renames: after a RENAME or SET SCHEMA (of a function, a schema, or a
 * type a function takes), the event trigger brings the signatures up to
 * date; it looks at the statement first and does nothing for any other
 * ALTER.  (ALTER INDEX can rename a table too.)
 */
DROP EVENT TRIGGER apiary_ddl_command_end;
CREATE EVENT TRIGGER apiary_ddl_command_end ON ddl_command_end
    WHEN TAG IN ('CREATE FUNCTION', 'CREATE PROCEDURE',
                 'ALTER FUNCTION', 'ALTER PROCEDURE', 'ALTER ROUTINE', 'ALTER SCHEMA',
                 'ALTER TYPE', 'ALTER DOMAIN', 'ALTER TABLE', 'ALTER INDEX', 'ALTER VIEW',
                 'ALTER MATERIALIZED VIEW', 'ALTER FOREIGN TABLE', 'ALTER SEQUENCE',
                 'ALTER EXTENSION')
    EXECUTE FUNCTION apiary.on_ddl_command_end();
ALTER EVENT TRIGGER apiary_ddl_command_end ENABLE ALWAYS;
