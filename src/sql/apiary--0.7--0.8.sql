/* src/sql/apiary--0.7--0.8.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.8'" to load this file. \quit

/*
 * Cancel: also a finished workflow's unfinished tasks.  A workflow is
 * finished when its root task is, and tasks it queued without waiting for
 * them may still be pending, waiting or running; a cancel used to leave
 * them all, silently.  Now it cancels them, and a running one rolls back
 * at its end: it finds its own row cancelled (the workflow keeps its
 * outcome, which apiary_result has reported).  A running workflow is
 * cancelled as before: its running tasks find the workflow cancelled.
 */
CREATE OR REPLACE FUNCTION apiary.cancel_workflow(wf_role pg_catalog.oid, wf_id pg_catalog.text)
RETURNS pg_catalog.bool LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    taken int8[];
    finished bool := false;
BEGIN
    UPDATE apiary.workflows
       SET state = 'cancelled', finished_at = clock_timestamp(),
           error = jsonb_build_object('sqlstate', '57014',
                                      'message', format('workflow "%s" was cancelled', wf_id))
     WHERE role = wf_role AND id = wf_id AND state = 'running';
    IF NOT FOUND THEN
        IF NOT EXISTS (SELECT FROM apiary.workflows WHERE role = wf_role AND id = wf_id) THEN
            RETURN false;
        END IF;
        finished := true;
    END IF;
    WITH gone AS (
        DELETE FROM apiary.ready r
         WHERE r.ctid = ANY (ARRAY(
               SELECT x.ctid FROM apiary.ready x JOIN apiary.tasks t ON t.id = x.task
                WHERE t.role = wf_role AND t.workflow = wf_id
                  FOR UPDATE OF x SKIP LOCKED))
        RETURNING r.task)
    SELECT array_agg(task) INTO taken FROM gone;
    -- pending tasks whose ready row an executor holds are running: in a
    -- finished workflow they are cancelled here, and find it at their end
    UPDATE apiary.tasks
       SET state = 'cancelled', finished_at = clock_timestamp(),
           error = jsonb_build_object('sqlstate', '57014', 'cancelled', 'by apiary_cancel')
     WHERE (id = ANY (taken) AND state = 'pending')
        OR id IN (SELECT id FROM apiary.tasks
                   WHERE role = wf_role AND workflow = wf_id
                     AND (state IN ('waiting', 'linked') OR (finished AND state = 'pending'))
                     FOR UPDATE SKIP LOCKED);
    RETURN true;
END $$;

/*
 * Provenance status: the slot is this database's only.  A slot of the name
 * left in the database apiary.database named before is not this
 * database's recording (the collector drops it: it held WAL forever), and
 * a database that apiary.database does not name records nothing.
 */
CREATE OR REPLACE VIEW apiary.provenance_status AS
    SELECT pg_catalog.current_setting('apiary.provenance', true) AS setting,
           pg_catalog.current_setting('wal_level') AS wal_level,
           s.slot_name IS NOT NULL AS slot,
           pg_catalog.pg_wal_lsn_diff(
               CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL ELSE pg_catalog.pg_current_wal_lsn() END,
               s.confirmed_flush_lsn)::pg_catalog.int8 AS lag_bytes,
           CASE
             WHEN coalesce(pg_catalog.current_setting('apiary.provenance', true), 'off')
                  OPERATOR(pg_catalog.=) 'off' THEN 'off'
             WHEN pg_catalog.current_database() OPERATOR(pg_catalog.<>)
                  coalesce(pg_catalog.current_setting('apiary.database', true), 'postgres')
               THEN 'not recording: apiary.database is '
                    || coalesce(pg_catalog.current_setting('apiary.database', true), 'postgres')
             WHEN pg_catalog.current_setting('wal_level') OPERATOR(pg_catalog.<>) 'logical'
               THEN 'not recording: wal_level is ' || pg_catalog.current_setting('wal_level')
                    || '; set wal_level = logical and restart'
             -- pg_settings, not current_setting: only roles that may read
             -- the setting see it there, and others get no error
             WHEN NOT ('apiary' OPERATOR(pg_catalog.=) ANY (pg_catalog.string_to_array(
                       pg_catalog.replace(coalesce((SELECT g.setting FROM pg_catalog.pg_settings g
                                                     WHERE g.name OPERATOR(pg_catalog.=) 'output_plugin_libraries'),
                                                   'apiary'), ' ', ''), ',')))
               THEN 'not recording: output_plugin_libraries does not list apiary; add it and reload'
             WHEN s.slot_name IS NULL THEN 'starting (or failing: see the server log)'
             ELSE 'recording'
           END AS state
      FROM (SELECT 1) one
      LEFT JOIN pg_catalog.pg_replication_slots s
             ON s.slot_name OPERATOR(pg_catalog.=) 'apiary_provenance'
            AND s.database OPERATOR(pg_catalog.=) pg_catalog.current_database();


/*
 * Retention: not a finished workflow whose tasks are not all finished (it
 * queued some it did not wait for).  Deleting one whose task was running
 * waited for that task's ready row, past the lock timeout, and the whole
 * batch failed, every minute until the task ended; and the task would
 * have finished on a row deleted under it.  It is deleted once they are
 * (or once apiary_cancel has ended them), so no pending task, and no
 * ready row, goes with it any more.
 */
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
