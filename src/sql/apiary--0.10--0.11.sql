/* src/sql/apiary--0.10--0.11.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.11'" to load this file. \quit

/*
 * Workflow timeouts.  apiary_start(..., timeout => '15 min') gives a
 * workflow a deadline: if it has not finished by then, the launcher
 * cancels it, as apiary_cancel would, and apiary_result raises 57014
 * saying it timed out.  A resume gives it the same time again.
 *
 *	- timeout: what apiary_start was given (NULL: none);
 *	- deadline: when the launcher cancels the workflow if it is still
 *	  running.  The launcher clears it once the time has come (a workflow
 *	  that finished in time included), and a cancel clears it, so the
 *	  index holds only deadlines to come and the few just passed.
 *
 * The index does not mention state: the update that finishes a workflow
 * stays HOT (an index whose predicate named state would have made every
 * workflow's finish write index entries, timeout or not).
 */
ALTER TABLE apiary.workflows
    ADD COLUMN timeout pg_catalog.interval,
    ADD COLUMN deadline pg_catalog.timestamptz;
COMMENT ON COLUMN apiary.workflows.timeout IS 'the timeout apiary_start was given: a workflow not finished in that time is cancelled';
COMMENT ON COLUMN apiary.workflows.deadline IS 'when the launcher cancels the workflow if it is still running; cleared once passed';
CREATE INDEX workflows_deadline ON apiary.workflows (deadline) WHERE deadline IS NOT NULL;

/*
 * apiary_start takes the timeout.  A new parameter with a default needs a
 * new function (an overload would make three-argument calls ambiguous);
 * the old one's privileges are carried over, exactly: the new function's
 * privileges (which default privileges changed since may have made other
 * than the old one's) are revoked, and each of the old one's granted
 * again by its grantor, so that grant chains survive.  Grants made in an
 * extension's script count as its initial privileges, which pg_dump leaves
 * out: the old function's initial privileges (none: it was created with
 * the default ones) are put back, so that a dump keeps the grants.
 */
DO $do$
DECLARE
    old_fn pg_catalog.oid := '@extschema@.apiary_start(pg_catalog.text, pg_catalog.jsonb, pg_catalog.text)'::pg_catalog.regprocedure;
    new_fn pg_catalog.oid;
    old_owner pg_catalog.oid := (SELECT proowner FROM pg_catalog.pg_proc
                                  WHERE oid OPERATOR(pg_catalog.=) old_fn);
    acl pg_catalog.aclitem[] := (SELECT coalesce(proacl, pg_catalog.acldefault('f', proowner))
                                  FROM pg_catalog.pg_proc WHERE oid OPERATOR(pg_catalog.=) old_fn);
    new_owner pg_catalog.oid;
    grantors pg_catalog.oid[];
    grantees pg_catalog.oid[];
    grantable bool[];
    done bool[];
    pending int;
    progress bool;
    saved_role text := pg_catalog.current_setting('role');
    dependents text := (SELECT pg_catalog.string_agg(pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid), ', ')
                          FROM pg_catalog.pg_depend d
                         WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
                           AND d.refobjid OPERATOR(pg_catalog.=) old_fn
                           AND d.deptype OPERATOR(pg_catalog.=) 'n');
    init pg_catalog.pg_init_privs := (SELECT i FROM pg_catalog.pg_init_privs i
                                       WHERE i.objoid OPERATOR(pg_catalog.=) old_fn
                                         AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
                                         AND i.objsubid OPERATOR(pg_catalog.=) 0);
    g record;
BEGIN
    -- the DROP's own error would suggest CASCADE, which drops users' objects
    IF dependents IS NOT NULL THEN
        RAISE EXCEPTION 'cannot update extension apiary: other objects depend on apiary_start(text, jsonb, text)'
            USING ERRCODE = '2BP01',
                  DETAIL = 'Objects that call it: ' || dependents || '.',
                  HINT = 'Version 0.11 makes apiary_start anew, with a timeout parameter: drop those objects, update, and create them again.';
    END IF;
    DROP FUNCTION @extschema@.apiary_start(pg_catalog.text, pg_catalog.jsonb, pg_catalog.text);
    CREATE FUNCTION @extschema@.apiary_start(
        name pg_catalog.text,
        args pg_catalog.jsonb DEFAULT '{}',
        key pg_catalog.text DEFAULT NULL,
        timeout pg_catalog.interval DEFAULT NULL)
        RETURNS pg_catalog.text
        AS 'MODULE_PATHNAME', 'apiary_start'
        LANGUAGE C VOLATILE PARALLEL UNSAFE;
    new_fn := '@extschema@.apiary_start(pg_catalog.text, pg_catalog.jsonb, pg_catalog.text, pg_catalog.interval)'::pg_catalog.regprocedure;
    new_owner := (SELECT proowner FROM pg_catalog.pg_proc WHERE oid OPERATOR(pg_catalog.=) new_fn);
    FOR g IN SELECT DISTINCT a.grantee FROM pg_catalog.aclexplode(
                 (SELECT coalesce(proacl, pg_catalog.acldefault('f', proowner))
                    FROM pg_catalog.pg_proc WHERE oid OPERATOR(pg_catalog.=) new_fn)) a
              WHERE a.grantee OPERATOR(pg_catalog.<>) new_owner
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION @extschema@.apiary_start(pg_catalog.text, pg_catalog.jsonb, pg_catalog.text, pg_catalog.interval) FROM %s CASCADE',
                                  CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                       ELSE g.grantee::pg_catalog.regrole::pg_catalog.text END);
    END LOOP;
    -- the owner's grants first, then each grantor's once it holds the
    -- grant option it granted by
    SELECT pg_catalog.array_agg(a.grantor), pg_catalog.array_agg(a.grantee),
           pg_catalog.array_agg(a.is_grantable)
      INTO grantors, grantees, grantable
      FROM pg_catalog.aclexplode(acl) a
     WHERE a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
       AND a.grantee OPERATOR(pg_catalog.<>) old_owner;
    pending := coalesce(pg_catalog.cardinality(grantors), 0);
    done := pg_catalog.array_fill(false, ARRAY[pending]);
    LOOP
        progress := false;
        FOR i IN 1 .. coalesce(pg_catalog.cardinality(grantors), 0) LOOP
            CONTINUE WHEN done[i];
            CONTINUE WHEN grantors[i] OPERATOR(pg_catalog.<>) old_owner AND
                NOT pg_catalog.has_function_privilege(grantors[i], new_fn, 'EXECUTE WITH GRANT OPTION');
            done[i] := true;
            progress := true;
            BEGIN
                IF grantors[i] OPERATOR(pg_catalog.<>) old_owner THEN
                    PERFORM pg_catalog.set_config('role', (SELECT r.rolname FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) grantors[i]), true);
                END IF;
                EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @extschema@.apiary_start(pg_catalog.text, pg_catalog.jsonb, pg_catalog.text, pg_catalog.interval) TO %s%s',
                                          CASE WHEN grantees[i] OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                               ELSE grantees[i]::pg_catalog.regrole::pg_catalog.text END,
                                          CASE WHEN grantable[i] THEN ' WITH GRANT OPTION' ELSE '' END);
                IF grantors[i] OPERATOR(pg_catalog.<>) old_owner THEN
                    PERFORM pg_catalog.set_config('role', saved_role, true);
                END IF;
                pending := pending OPERATOR(pg_catalog.-) 1;
            EXCEPTION WHEN OTHERS THEN
                -- (the grantor may not reach the schema, say): counted below
                NULL;
            END;
        END LOOP;
        EXIT WHEN NOT progress;
    END LOOP;
    IF pending OPERATOR(pg_catalog.>) 0 THEN
        RAISE WARNING '% grants on apiary_start could not be made again', pending
            USING HINT = 'Compare the privileges on apiary_start with those before the update.';
    END IF;
    DELETE FROM pg_catalog.pg_init_privs i
     WHERE i.objoid OPERATOR(pg_catalog.=) new_fn
       AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass;
    IF init.objoid IS NOT NULL THEN
        INSERT INTO pg_catalog.pg_init_privs
            VALUES (new_fn, init.classoid, 0, init.privtype, init.initprivs);
    END IF;
END $do$;
COMMENT ON FUNCTION @extschema@.apiary_start(pg_catalog.text, pg_catalog.jsonb, pg_catalog.text, pg_catalog.interval) IS
    'start a workflow: queue a call run by the background executors after this transaction commits; returns the workflow id; with a timeout, a workflow not finished by then is cancelled';

/*
 * Cancel, by apiary_cancel (timed_out NULL) or by the workflow's timeout
 * (timed_out its timeout), as 0.8's cancel_workflow did; the workflow's
 * error says which (a timeout's names the timeout, which is how a task
 * found running learns it), and so does each task's.  A cancel clears the
 * deadline: nothing is left to time out.
 */
CREATE FUNCTION apiary.cancel_workflow(wf_role pg_catalog.oid, wf_id pg_catalog.text,
                                       timed_out pg_catalog.interval)
RETURNS pg_catalog.bool LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    taken int8[];
    finished bool := false;
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
           error = jsonb_build_object('sqlstate', '57014', 'cancelled',
                                      CASE WHEN timed_out IS NULL THEN 'by apiary_cancel'
                                           ELSE 'by the workflow''s timeout' END)
     WHERE (id = ANY (taken) AND state = 'pending')
        OR id IN (SELECT id FROM apiary.tasks
                   WHERE role = wf_role AND workflow = wf_id
                     AND (state IN ('waiting', 'linked') OR (finished AND state = 'pending'))
                     FOR UPDATE SKIP LOCKED);
    RETURN true;
END $$;

CREATE OR REPLACE FUNCTION apiary.cancel_workflow(wf_role pg_catalog.oid, wf_id pg_catalog.text)
RETURNS pg_catalog.bool LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT apiary.cancel_workflow(wf_role, wf_id, NULL)
$$;

/*
 * The launcher, for each workflow whose deadline has come, holding the
 * workflow's cancel lock as apiary_cancel does: clear the deadline, and
 * cancel the workflow if it is still running.  True if it cancelled.
 */
CREATE FUNCTION apiary.expire_workflow(wf_role pg_catalog.oid, wf_id pg_catalog.text)
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
    IF NOT FOUND OR wf_state <> 'running' THEN
        RETURN false;
    END IF;
    RETURN apiary.cancel_workflow(wf_role, wf_id, wf_timeout);
END $$;

/*
 * Resume: as 0.9's, and a workflow with a timeout that has ended (failed,
 * cancelled, timed out) gets that time again, from the resume.
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
    -- a running workflow keeps its deadline
    UPDATE apiary.workflows
       SET state = 'running', error = NULL, finished_at = NULL,
           deadline = CASE WHEN state = 'running' THEN deadline
                           ELSE clock_timestamp() + timeout END
     WHERE role = wf_role AND id = wf_id AND state <> 'done';
    RETURN true;
END $$;

REVOKE ALL ON FUNCTION apiary.cancel_workflow(pg_catalog.oid, pg_catalog.text, pg_catalog.interval),
    apiary.expire_workflow(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;


/*
 * Row-level security compared each row's role with to_regrole(CURRENT_USER),
 * which reads the name as an identifier: folded to lower case, and an error
 * for a name with a dot.  Role "Alice" read alice's rows and not her own,
 * and role "svc.app" could not read the journal at all.  The name is now
 * quoted first, so it names exactly the current role.  apiary_graph did the
 * same; it also finds the caller's own workflow through the index on
 * (role, workflow) before it looks for the id among all roles' tasks.
 */
ALTER POLICY own_rows ON apiary.invocations
    USING (role OPERATOR(pg_catalog.=) pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER))
           OR pg_catalog.pg_has_role('apiary_admin', 'MEMBER'));
ALTER POLICY own_rows ON apiary.workflows
    USING (role OPERATOR(pg_catalog.=) pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER))
           OR pg_catalog.pg_has_role('apiary_admin', 'MEMBER'));
ALTER POLICY own_rows ON apiary.tasks
    USING (role OPERATOR(pg_catalog.=) pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER))
           OR pg_catalog.pg_has_role('apiary_admin', 'MEMBER'));
ALTER POLICY own_rows ON apiary.provenance_rows
    USING (role OPERATOR(pg_catalog.=) pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER))
           OR pg_catalog.pg_has_role('apiary_admin', 'MEMBER'));

CREATE OR REPLACE FUNCTION @extschema@.apiary_graph(workflow pg_catalog.text)
RETURNS pg_catalog.text LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    roles regrole[];
    who regrole;
    dot text;
    esc CONSTANT text := '["\\]';
BEGIN
    IF workflow IS NULL THEN
        RAISE EXCEPTION 'workflow id must not be null' USING ERRCODE = '22004';
    END IF;
    -- the caller's own, through the index on (role, workflow); else, for
    -- an apiary_admin member, the one role that has the id
    who := pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER));
    IF EXISTS (SELECT FROM apiary.tasks t
                WHERE t.role OPERATOR(pg_catalog.=) who
                  AND t.workflow OPERATOR(pg_catalog.=) apiary_graph.workflow) THEN
        roles := ARRAY[who];
    ELSE
        SELECT array_agg(DISTINCT t.role) INTO roles FROM apiary.tasks t
         WHERE t.workflow OPERATOR(pg_catalog.=) apiary_graph.workflow;
    END IF;
    IF roles IS NULL THEN
        RAISE EXCEPTION 'workflow "%" does not exist', workflow USING ERRCODE = '42704';
    ELSIF NOT who OPERATOR(pg_catalog.=) ANY (roles) THEN
        IF cardinality(roles) OPERATOR(pg_catalog.>) 1 THEN
            RAISE EXCEPTION 'workflow id "%" is used by % roles', workflow, cardinality(roles)
                USING ERRCODE = '42P08';
        END IF;
        who := roles[1];
    END IF;

    SELECT 'digraph "' || regexp_replace(apiary_graph.workflow, esc, '\\\&', 'g') || E'" {\n'
        || E'  rankdir=LR;\n'
        || E'  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];\n'
        || coalesce(string_agg(format(E'  t%s [label="%s: %s\\n%s%s", fillcolor="%s"];\n',
               t.id, t.id, regexp_replace(t.function, esc, '\\\&', 'g'), t.state,
               CASE WHEN t.finished_at IS NOT NULL AND t.started_at IS NOT NULL
                    THEN format(', %s ms', round((extract(epoch FROM t.finished_at OPERATOR(pg_catalog.-) t.started_at)
                                                  OPERATOR(pg_catalog.*) 1000)::numeric, 1))
                    ELSE '' END,
               CASE t.state WHEN 'done' THEN '#c8e6c9' WHEN 'failed' THEN '#ffcdd2'
                            WHEN 'cancelled' THEN '#e0e0e0' ELSE '#fff9c4' END),
               '' ORDER BY t.id), '')
      INTO dot
      FROM apiary.tasks t
     WHERE t.role OPERATOR(pg_catalog.=) who AND t.workflow OPERATOR(pg_catalog.=) apiary_graph.workflow;

    SELECT dot || coalesce(string_agg(e.line, '' ORDER BY e.a, e.b, e.line), '') || '}' || E'\n'
      INTO dot
      FROM (SELECT t.parent AS a, t.id AS b, format(E'  t%s -> t%s;\n', t.parent, t.id) AS line
              FROM apiary.tasks t
             WHERE t.role OPERATOR(pg_catalog.=) who AND t.workflow OPERATOR(pg_catalog.=) apiary_graph.workflow
               AND t.parent IS NOT NULL
            UNION ALL
            SELECT w.future, w.task, format(E'  t%s -> t%s [style=dashed, label="argument"];\n', w.future, w.task)
              FROM apiary.waits w JOIN apiary.tasks t ON t.id OPERATOR(pg_catalog.=) w.task
             WHERE t.role OPERATOR(pg_catalog.=) who AND t.workflow OPERATOR(pg_catalog.=) apiary_graph.workflow
            UNION ALL
            SELECT t.linked_to, t.id, format(E'  t%s -> t%s [style=dotted, label="output"];\n', t.linked_to, t.id)
              FROM apiary.tasks t
             WHERE t.role OPERATOR(pg_catalog.=) who AND t.workflow OPERATOR(pg_catalog.=) apiary_graph.workflow
               AND t.linked_to IS NOT NULL) e;
    RETURN dot;
END $$;

/*
 * The statement trigger that tells sessions' caches a registration
 * changed fires also under session_replication_role = replica, as the
 * registry's other triggers do: a change made so was applied to the table
 * but not to the executors' caches.
 */
ALTER TABLE apiary.functions ENABLE ALWAYS TRIGGER registry_changed;

/* Queue depth, for monitoring: apiary_admin may read the ready queue. */
GRANT SELECT ON apiary.ready TO apiary_admin;
