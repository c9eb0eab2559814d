/* src/sql/apiary--0.5--0.6.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.6'" to load this file. \quit

/*
 * Less WAL per task: the task rows' updates become HOT.
 *
 * Up to 0.5 the ready tasks were a partial index of apiary.tasks (WHERE
 * state = 'pending') and the tasks that returned a future another one
 * (on linked_to).  A column an index or its predicate depends on makes
 * every update of the row a new row version with new entries in every
 * index of the table, so each task's outcome, and each link, wrote its
 * row afresh with three index entries.  Now:
 *
 *   apiary.ready  holds a row (run_after, task) for each pending task.  It
 *                 is written with the task's state, in the same
 *                 transaction; an executor claims a task by deleting its
 *                 row, skipping rows another executor is deleting (as FOR
 *                 UPDATE SKIP LOCKED does), and its commit or rollback
 *                 settles both.
 *   apiary.links  holds (future, task) for each task that returned a
 *                 future; tasks.linked_to still says it, for reading.
 *
 * Nothing indexed in apiary.tasks changes after its insert, and its pages
 * keep room for the updates (fillfactor), so they are HOT: a few dozen
 * bytes of WAL instead of a new row and three index entries.
 */
CREATE TABLE apiary.ready (
    run_after     pg_catalog.timestamptz NOT NULL,
    task          pg_catalog.int8 NOT NULL,
    PRIMARY KEY (run_after, task)
);
COMMENT ON TABLE apiary.ready IS
    'the pending tasks, by when they may run; an executor claims a task by deleting its row';
-- A queue: every claim leaves a dead row and index entry that the next
-- claims walk until VACUUM removes them, so vacuum it early.
ALTER TABLE apiary.ready SET (autovacuum_vacuum_scale_factor = 0.01,
                              autovacuum_vacuum_threshold = 1000,
                              autovacuum_vacuum_insert_scale_factor = 0.01);
INSERT INTO apiary.ready
    SELECT run_after, id FROM apiary.tasks WHERE state OPERATOR(pg_catalog.=) 'pending';
DROP INDEX apiary.tasks_ready;

CREATE TABLE apiary.links (
    future        pg_catalog.int8 NOT NULL,
    task          pg_catalog.int8 NOT NULL,
    PRIMARY KEY (future, task)
);
COMMENT ON TABLE apiary.links IS
    'edges from a future to the tasks that returned it (tasks.linked_to), for finding them when it finishes';
INSERT INTO apiary.links
    SELECT linked_to, id FROM apiary.tasks WHERE linked_to IS NOT NULL;
DROP INDEX apiary.tasks_linked;

-- room on each page for a task's two or three updates (new pages only)
ALTER TABLE apiary.tasks SET (fillfactor = 50);

REVOKE ALL ON apiary.ready, apiary.links FROM PUBLIC;

/*
 * Cancel: the ready rows it can take (an executor that claimed a task
 * holds its row until it commits) go, and their tasks are cancelled with
 * those waiting or linked; a task that is running checks the workflow
 * before it commits and cancels itself (0.2's comment above
 * cancel_workflow).
 */
CREATE OR REPLACE FUNCTION apiary.cancel_workflow(wf_role pg_catalog.oid, wf_id pg_catalog.text)
RETURNS pg_catalog.bool LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    taken int8[];
BEGIN
    UPDATE apiary.workflows
       SET state = 'cancelled', finished_at = clock_timestamp(),
           error = jsonb_build_object('sqlstate', '57014',
                                      'message', format('workflow "%s" was cancelled', wf_id))
     WHERE role = wf_role AND id = wf_id AND state = 'running';
    IF NOT FOUND THEN
        RETURN EXISTS (SELECT FROM apiary.workflows WHERE role = wf_role AND id = wf_id);
    END IF;
    WITH gone AS (
        DELETE FROM apiary.ready r
         WHERE r.ctid = ANY (ARRAY(
               SELECT x.ctid FROM apiary.ready x JOIN apiary.tasks t ON t.id = x.task
                WHERE t.role = wf_role AND t.workflow = wf_id
                  FOR UPDATE OF x SKIP LOCKED))
        RETURNING r.task)
    SELECT array_agg(task) INTO taken FROM gone;
    UPDATE apiary.tasks
       SET state = 'cancelled', finished_at = clock_timestamp(),
           error = jsonb_build_object('sqlstate', '57014', 'cancelled', 'by apiary_cancel')
     WHERE (id = ANY (taken) AND state = 'pending')
        OR id IN (SELECT id FROM apiary.tasks
                   WHERE role = wf_role AND workflow = wf_id
                     AND state IN ('waiting', 'linked')
                     FOR UPDATE SKIP LOCKED);
    RETURN true;
END $$;

-- Resume: the tasks it makes pending get their ready rows.
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
               run_after = clock_timestamp()
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

-- Retention: also the ready rows and links of the tasks it deletes (a
-- finished workflow can leave tasks it did not wait for).
CREATE OR REPLACE FUNCTION apiary.prune(older_than pg_catalog.interval, batch pg_catalog.int4)
RETURNS pg_catalog.int4 LANGUAGE plpgsql
-- housekeeping yields: a DROP EXTENSION or ALTER TABLE never waits on it
-- (it gives up in a moment, and the launcher tries again later)
SET lock_timeout = '100ms'
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
                                   LIMIT batch FOR UPDATE SKIP LOCKED)
        RETURNING w.role, w.id),
    tasks AS (
        DELETE FROM apiary.tasks t USING gone
         WHERE t.role OPERATOR(pg_catalog.=) gone.role AND t.workflow OPERATOR(pg_catalog.=) gone.id
        RETURNING t.id, t.state),
    waits AS (
        DELETE FROM apiary.waits x USING tasks WHERE x.task OPERATOR(pg_catalog.=) tasks.id),
    links AS (
        -- a link's future is a task of the same workflow
        DELETE FROM apiary.links l USING tasks WHERE l.future OPERATOR(pg_catalog.=) tasks.id),
    ready AS (
        DELETE FROM apiary.ready r USING tasks
         WHERE tasks.state OPERATOR(pg_catalog.=) 'pending' AND r.task OPERATOR(pg_catalog.=) tasks.id)
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
