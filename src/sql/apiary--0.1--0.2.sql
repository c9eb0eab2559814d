/* src/sql/apiary--0.1--0.2.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.2'" to load this file. \quit

/*
 * Workflows: trees of tasks run by background executors.
 *
 * A workflow is started by apiary_start, which queues its root task.  A
 * running task may queue children with apiary_queue; each returns a future,
 * {"apiary_future": <task id>}, which may stand as a top-level argument
 * value of a later apiary_queue (that task then waits for it) or be returned
 * as the task's result (the task's output becomes the future's output).
 *
 * Task states:
 *	waiting		queued with futures among its arguments that are not done yet
 *	pending		ready to run (run_after reached); executors claim these
 *	linked		ran, and returned the future linked_to: done when it is
 *	done, failed, cancelled
 *
 * A task runs, records its output or error, releases its waiters and
 * commits its effects in one transaction, so it never appears as running:
 * while an executor runs it, it is a pending row that executor has locked.
 */
CREATE TABLE apiary.workflows (
    role          pg_catalog.regrole NOT NULL,
    id            pg_catalog.text COLLATE "C" NOT NULL,
    function      pg_catalog.text NOT NULL,
    args          pg_catalog.jsonb NOT NULL,
    state         pg_catalog.text NOT NULL DEFAULT 'running'
                  CHECK (state OPERATOR(pg_catalog.=) ANY
                         (ARRAY['running', 'done', 'failed', 'cancelled']::pg_catalog.text[])),
    root          pg_catalog.int8,
    output        pg_catalog.jsonb,
    error         pg_catalog.jsonb,
    started_at    pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    finished_at   pg_catalog.timestamptz,
    PRIMARY KEY (role, id)
);
COMMENT ON TABLE apiary.workflows IS 'workflows started by apiary_start, one per (role, id)';

CREATE TABLE apiary.tasks (
    id            pg_catalog.int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    role          pg_catalog.regrole NOT NULL,
    workflow      pg_catalog.text COLLATE "C" NOT NULL,
    parent        pg_catalog.int8,
    function      pg_catalog.text NOT NULL,
    args          pg_catalog.jsonb NOT NULL,
    state         pg_catalog.text NOT NULL
                  CHECK (state OPERATOR(pg_catalog.=) ANY
                         (ARRAY['waiting', 'pending', 'linked', 'done', 'failed',
                                'cancelled']::pg_catalog.text[])),
    waiting_for   pg_catalog.int4 NOT NULL DEFAULT 0,
    linked_to     pg_catalog.int8,
    attempts      pg_catalog.int4 NOT NULL DEFAULT 0,
    crashes       pg_catalog.int4 NOT NULL DEFAULT 0,
    output        pg_catalog.jsonb,
    error         pg_catalog.jsonb,
    run_after     pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    queued_at     pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    started_at    pg_catalog.timestamptz,
    finished_at   pg_catalog.timestamptz,
    xid           pg_catalog.xid8
);
COMMENT ON TABLE apiary.tasks IS 'tasks of workflows: queued, run once by an executor, journaled';
-- No foreign keys between the workflow tables: every row is written by
-- apiary's own code, and each key check would cost a locking lookup per task.
COMMENT ON COLUMN apiary.tasks.waiting_for IS 'futures among the arguments that are not done yet';
COMMENT ON COLUMN apiary.tasks.linked_to IS 'the future this task returned: its output becomes this task''s';
COMMENT ON COLUMN apiary.tasks.xid IS 'the transaction that ran the task';
COMMENT ON COLUMN apiary.tasks.crashes IS 'times the server went down while the task ran';
CREATE INDEX tasks_ready ON apiary.tasks (run_after, id) WHERE state OPERATOR(pg_catalog.=) 'pending';
-- A queue: every task leaves a dead entry in tasks_ready when it runs, and
-- the claim walks those until VACUUM removes them, so vacuum it early.
ALTER TABLE apiary.tasks SET (autovacuum_vacuum_scale_factor = 0.01,
                              autovacuum_vacuum_threshold = 1000,
                              autovacuum_vacuum_insert_scale_factor = 0.01);
CREATE INDEX tasks_workflow ON apiary.tasks (role, workflow);
CREATE INDEX tasks_linked ON apiary.tasks (linked_to) WHERE linked_to IS NOT NULL;

-- Future -> task waiting for it.
CREATE TABLE apiary.waits (
    future        pg_catalog.int8 NOT NULL,
    task          pg_catalog.int8 NOT NULL,
    PRIMARY KEY (future, task)
);
CREATE INDEX waits_task ON apiary.waits (task);
COMMENT ON TABLE apiary.waits IS 'edges from a future to the tasks that take it as an argument';

REVOKE ALL ON apiary.workflows, apiary.tasks, apiary.waits FROM PUBLIC;

-- The API.
CREATE FUNCTION @extschema@.apiary_start(
    name pg_catalog.text,
    args pg_catalog.jsonb DEFAULT '{}',
    key pg_catalog.text DEFAULT NULL)
    RETURNS pg_catalog.text
    AS 'MODULE_PATHNAME', 'apiary_start'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.apiary_start(pg_catalog.text, pg_catalog.jsonb, pg_catalog.text) IS
    'start a workflow: queue a call run by the background executors after this transaction commits; returns the workflow id';

CREATE FUNCTION @extschema@.apiary_queue(
    name pg_catalog.text,
    args pg_catalog.jsonb DEFAULT '{}')
    RETURNS pg_catalog.jsonb
    AS 'MODULE_PATHNAME', 'apiary_queue'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.apiary_queue(pg_catalog.text, pg_catalog.jsonb) IS
    'inside a running task: queue a child task, run after this one commits; returns its future';

CREATE FUNCTION @extschema@.apiary_result(
    workflow pg_catalog.text,
    timeout pg_catalog.interval DEFAULT NULL)
    RETURNS pg_catalog.jsonb
    AS 'MODULE_PATHNAME', 'apiary_result'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.apiary_result(pg_catalog.text, pg_catalog.interval) IS
    'wait for a workflow to finish and return its output, or raise its error';

CREATE FUNCTION @extschema@.apiary_status(workflow pg_catalog.text)
    RETURNS TABLE (task pg_catalog.int8, parent pg_catalog.int8,
                   function pg_catalog.text, state pg_catalog.text,
                   attempts pg_catalog.int4, waiting_for pg_catalog.int4,
                   linked_to pg_catalog.int8, output pg_catalog.jsonb,
                   error pg_catalog.jsonb, queued_at pg_catalog.timestamptz,
                   started_at pg_catalog.timestamptz,
                   finished_at pg_catalog.timestamptz)
    AS 'MODULE_PATHNAME', 'apiary_status'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.apiary_status(pg_catalog.text) IS
    'the tasks of one of your workflows';

/*
 * Cancelling and resuming, for apiary_cancel and apiary_resume (which call
 * these as the journal's owner, for the calling role's workflow).
 *
 * Cancel marks the workflow first.  An executor running one of its tasks
 * checks the workflow before it lets the task's effects stand, and holds a
 * lock on the workflow's id from that check to its commit; apiary_cancel
 * takes that lock (exclusively) before calling cancel_workflow.  A task
 * still running then rolls back and marks itself cancelled (the cancel
 * skips the task rows executors hold, so neither waits for the other); a
 * task already past that check makes the cancel wait for its commit, and
 * what it queued is cancelled then.
 */
CREATE FUNCTION apiary.cancel_workflow(wf_role pg_catalog.oid, wf_id pg_catalog.text)
RETURNS pg_catalog.bool LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE apiary.workflows
       SET state = 'cancelled', finished_at = clock_timestamp(),
           error = jsonb_build_object('sqlstate', '57014',
                                      'message', format('workflow "%s" was cancelled', wf_id))
     WHERE role = wf_role AND id = wf_id AND state = 'running';
    IF NOT FOUND THEN
        RETURN EXISTS (SELECT FROM apiary.workflows WHERE role = wf_role AND id = wf_id);
    END IF;
    UPDATE apiary.tasks
       SET state = 'cancelled', finished_at = clock_timestamp(),
           error = jsonb_build_object('sqlstate', '57014', 'cancelled', 'by apiary_cancel')
     WHERE id IN (SELECT id FROM apiary.tasks
                   WHERE role = wf_role AND workflow = wf_id
                     AND state IN ('waiting', 'pending', 'linked')
                     FOR UPDATE SKIP LOCKED);
    RETURN true;
END $$;

CREATE FUNCTION apiary.resume_workflow(wf_role pg_catalog.oid, wf_id pg_catalog.text)
RETURNS pg_catalog.bool LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM FROM apiary.workflows WHERE role = wf_role AND id = wf_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- back to where each task stood: linked to its future, waiting for the
    -- futures not done yet, or ready to run
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
     WHERE t.id = w.id;
    UPDATE apiary.workflows SET state = 'running', error = NULL, finished_at = NULL
     WHERE role = wf_role AND id = wf_id AND state <> 'done';
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION apiary.cancel_workflow(pg_catalog.oid, pg_catalog.text),
    apiary.resume_workflow(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION @extschema@.apiary_cancel(workflow pg_catalog.text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'apiary_cancel'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.apiary_cancel(pg_catalog.text) IS
    'cancel every unfinished task of one of your workflows; a running task rolls back';

CREATE FUNCTION @extschema@.apiary_resume(workflow pg_catalog.text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'apiary_resume'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.apiary_resume(pg_catalog.text) IS
    'queue the failed and cancelled tasks of one of your workflows again';

CREATE FUNCTION @extschema@.apiary_task_key()
    RETURNS pg_catalog.text
    AS 'MODULE_PATHNAME', 'apiary_task_key'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.apiary_task_key() IS
    'inside a running task: a key that stays the same across its attempts, for external idempotency';
