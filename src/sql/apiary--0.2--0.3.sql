/* src/sql/apiary--0.2--0.3.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apiary UPDATE TO '0.3'" to load this file. \quit

/*
 * Security: each role sees its own journal rows, apiary_admin sees all.
 * (CURRENT_USER is a keyword, not a function a schema could capture.)
 *
 * apiary's own code reads and writes these tables directly, for the role
 * recorded in each row; users may read them, through row-level security:
 * a role sees its own keyed calls, workflows, tasks and their waits.
 * Members of apiary_admin (a NOLOGIN role created here, shared by every
 * database of the cluster, and left behind by DROP EXTENSION like any
 * role) see every row, and may pass other roles' workflow ids to
 * apiary_result, apiary_status, apiary_cancel and apiary_resume.
 */
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                    WHERE rolname OPERATOR(pg_catalog.=) 'apiary_admin') THEN
        CREATE ROLE apiary_admin NOLOGIN;
    END IF;
END $$;

-- the search_path a task runs with: its queuer's, when it was queued
ALTER TABLE apiary.tasks ADD COLUMN search_path pg_catalog.text;
COMMENT ON COLUMN apiary.tasks.search_path IS
    'the search_path in effect when the task was queued, in effect again when it runs';

ALTER TABLE apiary.invocations ENABLE ROW LEVEL SECURITY;
ALTER TABLE apiary.workflows ENABLE ROW LEVEL SECURITY;
ALTER TABLE apiary.tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE apiary.waits ENABLE ROW LEVEL SECURITY;

CREATE POLICY own_rows ON apiary.invocations FOR SELECT
    USING (role OPERATOR(pg_catalog.=) pg_catalog.to_regrole(CURRENT_USER)
           OR pg_catalog.pg_has_role('apiary_admin', 'MEMBER'));
CREATE POLICY own_rows ON apiary.workflows FOR SELECT
    USING (role OPERATOR(pg_catalog.=) pg_catalog.to_regrole(CURRENT_USER)
           OR pg_catalog.pg_has_role('apiary_admin', 'MEMBER'));
CREATE POLICY own_rows ON apiary.tasks FOR SELECT
    USING (role OPERATOR(pg_catalog.=) pg_catalog.to_regrole(CURRENT_USER)
           OR pg_catalog.pg_has_role('apiary_admin', 'MEMBER'));
-- the waits of the tasks one sees (the subquery is filtered in turn)
CREATE POLICY own_rows ON apiary.waits FOR SELECT
    USING (EXISTS (SELECT FROM apiary.tasks t WHERE t.id OPERATOR(pg_catalog.=) task));

GRANT SELECT ON apiary.invocations, apiary.workflows, apiary.tasks, apiary.waits TO PUBLIC;
