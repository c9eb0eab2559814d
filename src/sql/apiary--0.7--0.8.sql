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
