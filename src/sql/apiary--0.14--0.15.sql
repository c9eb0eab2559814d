/* src/sql/apiary--0.14--0.15.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.15'" to load this file. \quit

/*
 * A task runs with the settings of the session that queued it, as it
 * runs with its search_path: its JSON arguments are read, and its output
 * written, as apiary_invoke in that session would (a timestamp without
 * an offset in the queuer's TimeZone, an ambiguous date in its
 * DateStyle), and its function sees them.  The values of DateStyle,
 * IntervalStyle, TimeZone, bytea_output, extra_float_digits and
 * lc_monetary, in that order; NULL for a task queued before 0.15, which
 * runs with its executor's.
 */
ALTER TABLE apiary.tasks ADD COLUMN settings pg_catalog.text[];
COMMENT ON COLUMN apiary.tasks.settings IS
    'the DateStyle, IntervalStyle, TimeZone, bytea_output, extra_float_digits and lc_monetary of the session that queued the task';

/*
 * apiary_graph draws what apiary_status reports: a running task as
 * running (the table says pending until its executor commits), the id
 * looked up as there (an id several roles use says how to name one), and
 * the time a task's function ran only for a task that did not return a
 * future, whose finished_at is its future's.
 */
CREATE OR REPLACE FUNCTION @extschema@.apiary_graph(workflow pg_catalog.text)
RETURNS pg_catalog.text LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    esc CONSTANT text := '["\\]';
    code text;
    msg text;
    hint text;
BEGIN
    IF workflow IS NULL THEN
        RAISE EXCEPTION 'workflow id must not be null' USING ERRCODE = '22004';
    END IF;
    BEGIN
        RETURN (
        WITH t AS MATERIALIZED (SELECT * FROM @extschema@.apiary_status(apiary_graph.workflow)),
        nodes AS (
            SELECT string_agg(format(E'  t%s [label="%s: %s\\n%s%s", fillcolor="%s"];\n',
                       t.task, t.task, regexp_replace(t.function, esc, '\\\&', 'g'), t.state,
                       CASE WHEN t.finished_at IS NOT NULL AND t.started_at IS NOT NULL AND t.linked_to IS NULL
                            THEN format(', %s ms', round((extract(epoch FROM t.finished_at OPERATOR(pg_catalog.-) t.started_at)
                                                          OPERATOR(pg_catalog.*) 1000)::numeric, 1))
                            ELSE '' END,
                       CASE t.state WHEN 'done' THEN '#c8e6c9' WHEN 'failed' THEN '#ffcdd2'
                                    WHEN 'cancelled' THEN '#e0e0e0' WHEN 'running' THEN '#bbdefb'
                                    ELSE '#fff9c4' END),
                       '' ORDER BY t.task) AS lines
              FROM t),
        edges AS (
            SELECT string_agg(e.line, '' ORDER BY e.a, e.b, e.line) AS lines
              FROM (SELECT t.parent AS a, t.task AS b, format(E'  t%s -> t%s;\n', t.parent, t.task) AS line
                      FROM t
                     WHERE t.parent IS NOT NULL
                    UNION ALL
                    SELECT w.future, w.task, format(E'  t%s -> t%s [style=dashed, label="argument"];\n', w.future, w.task)
                      FROM apiary.waits w JOIN t ON t.task OPERATOR(pg_catalog.=) w.task
                    UNION ALL
                    SELECT t.linked_to, t.task, format(E'  t%s -> t%s [style=dotted, label="output"];\n', t.linked_to, t.task)
                      FROM t
                     WHERE t.linked_to IS NOT NULL) e)
        SELECT 'digraph "' || regexp_replace(apiary_graph.workflow, esc, '\\\&', 'g') || E'" {\n'
            || E'  rankdir=LR;\n'
            || E'  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];\n'
            || coalesce(nodes.lines, '') || coalesce(edges.lines, '') || E'}\n'
          FROM nodes, edges);
    EXCEPTION WHEN undefined_object OR ambiguous_parameter THEN
        -- apiary_status's, without this statement as its context
        GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                                hint = PG_EXCEPTION_HINT;
        IF hint = '' THEN
            RAISE EXCEPTION USING ERRCODE = code, MESSAGE = msg;
        END IF;
        RAISE EXCEPTION USING ERRCODE = code, MESSAGE = msg, HINT = hint;
    END;
END $$;

/*
 * A workflow's timeout bounds all its tasks: one whose root finished
 * before its deadline keeps its result, and the tasks it left unfinished
 * (queued, not waited for) are cancelled at the deadline, as apiary_cancel
 * of a finished workflow cancels them.  They had run on past it.  Looked
 * for first, by the index on (role, workflow): most finished workflows
 * have none.
 */
CREATE OR REPLACE FUNCTION apiary.expire_workflow(wf_role pg_catalog.oid, wf_id pg_catalog.text)
RETURNS pg_catalog.bool LANGUAGE plpgsql
-- housekeeping yields (as apiary.prune does)
SET lock_timeout = '100ms'
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    wf_state text;
    wf_timeout interval;
BEGIN
    UPDATE apiary.workflows SET deadline = NULL
     WHERE role = wf_role AND id = wf_id AND deadline <= clock_timestamp()
    RETURNING state, timeout INTO wf_state, wf_timeout;
    IF NOT FOUND OR (wf_state <> 'running' AND NOT EXISTS (
            SELECT FROM apiary.tasks
             WHERE role = wf_role AND workflow = wf_id
               AND state IN ('pending', 'waiting', 'linked'))) THEN
        RETURN false;
    END IF;
    RETURN apiary.cancel_workflow(wf_role, wf_id, wf_timeout);
END $$;

/*
 * The cancel's update of the tasks, in two statements that each go by an
 * index: as one, its OR read the whole of apiary.tasks for each cancel
 * (and for each deadline).
 */
CREATE OR REPLACE FUNCTION apiary.cancel_workflow(wf_role pg_catalog.oid, wf_id pg_catalog.text,
                                                  timed_out pg_catalog.interval)
RETURNS pg_catalog.bool LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    taken int8[];
    reason jsonb := jsonb_build_object('sqlstate', '57014', 'cancelled',
                                       CASE WHEN timed_out IS NULL THEN 'by apiary_cancel'
                                            ELSE 'by the workflow''s timeout' END);
BEGIN
    UPDATE apiary.workflows
       SET state = 'cancelled', finished_at = clock_timestamp(), deadline = NULL,
           error = CASE WHEN timed_out IS NULL
                        THEN jsonb_build_object('sqlstate', '57014',
                                                'message', format('workflow "%s" was cancelled', wf_id))
                        ELSE jsonb_build_object('sqlstate', '57014',
                                                'message', format('workflow "%s" timed out', wf_id),
                                                'detail', format('It did not finish within its timeout of %s, and was cancelled.', timed_out),
                                                'hint', 'apiary_resume runs its cancelled tasks again, with the same time to finish.',
                                                'timeout', timed_out)
                   END
     WHERE role = wf_role AND id = wf_id AND state = 'running';
    IF NOT FOUND AND NOT EXISTS (SELECT FROM apiary.workflows WHERE role = wf_role AND id = wf_id) THEN
        RETURN false;
    END IF;
    WITH gone AS (
        DELETE FROM apiary.ready r
         WHERE r.ctid = ANY (ARRAY(
               SELECT x.ctid FROM apiary.ready x JOIN apiary.tasks t ON t.id = x.task
                WHERE t.role = wf_role AND t.workflow = wf_id
                  FOR UPDATE OF x SKIP LOCKED))
        RETURNING r.task)
    SELECT array_agg(task) INTO taken FROM gone;
    -- pending tasks whose ready row an executor holds are running: they
    -- are cancelled here too, and find it at their end
    UPDATE apiary.tasks
       SET state = 'cancelled', finished_at = clock_timestamp(), error = reason
     WHERE id = ANY (taken) AND state = 'pending';
    UPDATE apiary.tasks
       SET state = 'cancelled', finished_at = clock_timestamp(), error = reason
     WHERE id = ANY (ARRAY(SELECT id FROM apiary.tasks
                            WHERE role = wf_role AND workflow = wf_id
                              AND state IN ('pending', 'waiting', 'linked')
                              FOR UPDATE SKIP LOCKED));
    RETURN true;
END $$;
