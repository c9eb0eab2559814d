/* src/sql/apiary--0.13--0.14.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.14'" to load this file. \quit

/*
 * A registration row that came in without its insert trigger (a data-only
 * restore with --disable-triggers) brings another database's fn_oid,
 * which may name nothing here, or another function.  Its signature names
 * its function here: where the two disagree and the signature names a
 * function that the role that registered it may register (one it owns,
 * as apiary_register requires), the OID is foreign and the signature
 * wins.  The OIDs so taken back are cleared first, all of them, as
 * foreign OIDs may swap or chain.  Where the signature names no function,
 * a rename the event trigger did not see (it refreshes the signature in
 * the renaming transaction itself) is the likelier cause, and the
 * signature follows the OID, as before.  The registry's lookups weigh the
 * two the same way (registry.c).
 */
CREATE OR REPLACE FUNCTION apiary.refresh_signatures() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET quote_all_identifiers = off AS $$
DECLARE
    foreign_oids text[];
    r record;
    f oid;
BEGIN
    IF (SELECT system_identifier FROM apiary.registry_cluster) <> apiary.system_identifier() THEN
        RETURN;     -- the OIDs are another cluster's: adopt_registrations first
    END IF;
    foreign_oids := ARRAY(
        SELECT x.name FROM apiary.functions x
         WHERE (pg_identify_object('pg_proc'::regclass, x.fn_oid, 0)).identity IS DISTINCT FROM x.fn
           AND EXISTS (SELECT FROM pg_proc p
                        WHERE p.oid = apiary.resolve_signature(x.fn)
                          AND pg_has_role(x.registered_by::oid, p.proowner, 'USAGE')));
    IF cardinality(foreign_oids) = 0 AND
       NOT EXISTS (SELECT FROM apiary.functions
                    WHERE (pg_identify_object('pg_proc'::regclass, fn_oid, 0)).identity <> fn
                      AND apiary.resolve_signature(fn) IS NULL) THEN
        RETURN;
    END IF;
    -- as a registration does, and before it: a transaction that goes on
    -- to register must not be left holding a weaker lock
    LOCK TABLE apiary.functions IN SHARE ROW EXCLUSIVE MODE;
    UPDATE apiary.functions SET fn_oid = NULL WHERE name = ANY (foreign_oids);
    FOR r IN SELECT name, fn, registered_by FROM apiary.functions
              WHERE name = ANY (foreign_oids) ORDER BY name LOOP
        f := (SELECT p.oid FROM pg_proc p
               WHERE p.oid = apiary.resolve_signature(r.fn)
                 AND pg_has_role(r.registered_by::oid, p.proowner, 'USAGE'));
        -- (two rows that name one function: the first keeps it)
        IF f IS NOT NULL AND NOT EXISTS (SELECT FROM apiary.functions WHERE fn_oid = f) THEN
            UPDATE apiary.functions SET fn_oid = f WHERE name = r.name;
        END IF;
    END LOOP;
    UPDATE apiary.functions SET fn = (pg_identify_object('pg_proc'::regclass, fn_oid, 0)).identity
     WHERE (pg_identify_object('pg_proc'::regclass, fn_oid, 0)).identity <> fn
       AND apiary.resolve_signature(fn) IS NULL;
END $$;

/*
 * A resume that runs tasks of a done workflow again (a failed task whose
 * output nothing waited for) left the workflow's row as it was, so that
 * retention, whose snapshot predated the resume's commit, took the
 * workflow with the tasks just resumed.  Such a resume now sets the
 * workflow's finished_at: retention counts from it, and a prune that
 * began before sees the row changed and checks it again.  Otherwise as
 * 0.11's.
 */
CREATE OR REPLACE FUNCTION apiary.resume_workflow(wf_role pg_catalog.oid, wf_id pg_catalog.text)
RETURNS pg_catalog.bool LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    PERFORM FROM apiary.workflows WHERE role = wf_role AND id = wf_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- back to where each task stood: linked to its future, waiting for the
    -- futures not done yet, or ready to run
    WITH resumed AS (
        UPDATE apiary.tasks t
           SET state = CASE WHEN t.linked_to IS NOT NULL THEN 'linked'
                            WHEN w.open > 0 THEN 'waiting' ELSE 'pending' END,
               waiting_for = w.open, error = NULL, finished_at = NULL,
               run_after = clock_timestamp(), attempts = 0, crashes = 0
          FROM (SELECT k.id,
                       (SELECT count(*) FROM apiary.waits x JOIN apiary.tasks f ON f.id = x.future
                         WHERE x.task = k.id AND f.state <> 'done') AS open
                  FROM apiary.tasks k
                 WHERE k.role = wf_role AND k.workflow = wf_id
                   AND k.state IN ('failed', 'cancelled')) w
         WHERE t.id = w.id
        RETURNING t.id, t.state, t.run_after),
    queued AS (
        INSERT INTO apiary.ready
            SELECT run_after, id FROM resumed WHERE state = 'pending')
    SELECT count(*) INTO n FROM resumed;
    -- a running workflow keeps its deadline
    UPDATE apiary.workflows
       SET state = 'running', error = NULL, finished_at = NULL,
           deadline = CASE WHEN state = 'running' THEN deadline
                           ELSE clock_timestamp() + timeout END
     WHERE role = wf_role AND id = wf_id AND state <> 'done';
    IF n > 0 THEN
        UPDATE apiary.workflows SET finished_at = clock_timestamp()
         WHERE role = wf_role AND id = wf_id AND state = 'done';
    END IF;
    RETURN true;
END $$;
