/* src/sql/apiary--0.8--0.9.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.9'" to load this file. \quit

/*
 * apiary.provenance ran as its owner, so the row-level security of
 * apiary.provenance_rows never applied to it: every role read every
 * role's recorded rows.  It now runs as the role that reads it.
 */
ALTER VIEW apiary.provenance SET (security_invoker = true);

/*
 * A keyed call belongs to the role that makes it, current_user where
 * apiary_invoke is called: inside a SECURITY DEFINER function, its owner.
 * It belonged to the outermost caller, which could then read the outputs
 * of calls made with the definer's rights.
 */
COMMENT ON COLUMN apiary.invocations.role IS
    'the role whose key namespace the key belongs to (current_user where apiary_invoke was called)';
COMMENT ON COLUMN apiary.invocations.parent_key IS
    'key of the enclosing keyed invocation, for nested calls (perhaps another role''s, around a SECURITY DEFINER function)';

/*
 * apiary_task_attempt: which attempt of the running task this is, so that
 * a function can tell its last (and compensate, say).  It and
 * apiary_task_key read the executor's own state, which a parallel worker
 * does not have: both are parallel restricted.
 */
CREATE FUNCTION @extschema@.apiary_task_attempt()
    RETURNS pg_catalog.int4
    AS 'MODULE_PATHNAME', 'apiary_task_attempt'
    LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.apiary_task_attempt() IS
    'inside a running task: which attempt this is, 1 at the first (and after a resume)';
ALTER FUNCTION @extschema@.apiary_task_key() PARALLEL RESTRICTED;

/*
 * Resume: each task it queues again starts with a fresh budget of
 * attempts and crashes; it used to run once and fail again at its first
 * error (or crash), its earlier attempts still counted.
 */
CREATE OR REPLACE FUNCTION apiary.resume_workflow(wf_role pg_catalog.oid, wf_id pg_catalog.text)
RETURNS pg_catalog.bool LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
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
        RETURNING t.id, t.state, t.run_after)
    INSERT INTO apiary.ready
        SELECT run_after, id FROM resumed WHERE state = 'pending';
    UPDATE apiary.workflows SET state = 'running', error = NULL, finished_at = NULL
     WHERE role = wf_role AND id = wf_id AND state <> 'done';
    RETURN true;
END $$;

/*
 * Retention: the check that a finished workflow has no unfinished task
 * left was planned as a scan of all of apiary.tasks, materialized, for
 * every batch (a quarter of a second per batch at a million tasks, and
 * growing with the journal).  The planner settings pinned here make it
 * probe each candidate's tasks through tasks_workflow instead.
 */
CREATE OR REPLACE FUNCTION apiary.prune(older_than pg_catalog.interval, batch pg_catalog.int4)
RETURNS pg_catalog.int4 LANGUAGE plpgsql
-- housekeeping yields: a DROP EXTENSION or ALTER TABLE never waits on it
-- (it gives up in a moment, and the launcher tries again later)
SET lock_timeout = '100ms'
-- probe each candidate's tasks by index, never a scan of all of them
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_material = off
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cutoff timestamptz := clock_timestamp() OPERATOR(pg_catalog.-) older_than;
    workflows int;
    calls int;
    rows_gone int;
BEGIN
    WITH gone AS (
        DELETE FROM apiary.workflows w
         WHERE (w.role, w.id) IN (SELECT x.role, x.id FROM apiary.workflows x
                                   WHERE x.state OPERATOR(pg_catalog.<>) 'running'
                                     AND x.finished_at OPERATOR(pg_catalog.<) cutoff
                                     AND NOT EXISTS (
                                         SELECT FROM apiary.tasks u
                                          WHERE u.role OPERATOR(pg_catalog.=) x.role
                                            AND u.workflow OPERATOR(pg_catalog.=) x.id
                                            AND u.state OPERATOR(pg_catalog.=) ANY
                                                (ARRAY['pending', 'waiting', 'linked']))
                                   LIMIT batch FOR UPDATE SKIP LOCKED)
        RETURNING w.role, w.id),
    tasks AS (
        DELETE FROM apiary.tasks t USING gone
         WHERE t.role OPERATOR(pg_catalog.=) gone.role AND t.workflow OPERATOR(pg_catalog.=) gone.id
        RETURNING t.id),
    waits AS (
        DELETE FROM apiary.waits x USING tasks WHERE x.task OPERATOR(pg_catalog.=) tasks.id),
    links AS (
        -- a link's future is a task of the same workflow
        DELETE FROM apiary.links l USING tasks WHERE l.future OPERATOR(pg_catalog.=) tasks.id)
    SELECT count(*) INTO workflows FROM gone;

    DELETE FROM apiary.invocations i
     WHERE i.ctid OPERATOR(pg_catalog.=) ANY (ARRAY(
           SELECT x.ctid FROM apiary.invocations x
            WHERE x.finished_at OPERATOR(pg_catalog.<) cutoff
            LIMIT batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS calls = ROW_COUNT;
    DELETE FROM apiary.provenance_rows p
     WHERE p.ctid OPERATOR(pg_catalog.=) ANY (ARRAY(
           SELECT x.ctid FROM apiary.provenance_rows x
            WHERE x.at OPERATOR(pg_catalog.<) cutoff
            LIMIT batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS rows_gone = ROW_COUNT;
    RETURN greatest(workflows, calls, rows_gone);
END $$;
