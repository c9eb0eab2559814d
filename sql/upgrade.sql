--
-- Upgrades: install the first release, then walk ALTER EXTENSION forward.
--
DROP EXTENSION apiary CASCADE;
CREATE EXTENSION apiary VERSION '0.1';
SELECT extversion FROM pg_extension WHERE extname = 'apiary';
CREATE FUNCTION kept(x int) RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT x + 1 $$;
SELECT apiary_invoke('kept', '1', 'before-upgrade');
SELECT to_regproc('apiary_start') IS NULL AS no_workflows_yet;

ALTER EXTENSION apiary UPDATE TO '0.2';
SELECT extversion FROM pg_extension WHERE extname = 'apiary';
-- registrations and the journal survive the update
SELECT name, kind FROM apiary.functions WHERE name = 'kept';
SELECT apiary_invoke('kept', '1', 'before-upgrade');
-- this library writes the workflow tables of 0.12: it says so, until updated
SELECT apiary_start('kept', '41', 'after-upgrade');

ALTER EXTENSION apiary UPDATE TO '0.5';
-- a workflow the 0.5 library queued: its task is pending in apiary.tasks
WITH t AS (INSERT INTO apiary.tasks (role, workflow, function, args, state, search_path)
           VALUES (current_user::regrole, 'queued-before-upgrade', 'kept', '1', 'pending', 'public')
           RETURNING id)
INSERT INTO apiary.workflows (role, id, function, args, root)
SELECT current_user::regrole, 'queued-before-upgrade', 'kept', '1', id FROM t;
SELECT apiary_start('kept', '41', 'after-upgrade');

-- a registration whose function was dropped unseen: 0.10, which names
-- functions by signature, has nothing to name it by, and removes it
CREATE FUNCTION gone() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
SELECT apiary_register('gone()', 'readonly');
ALTER EVENT TRIGGER apiary_sql_drop DISABLE;
DROP FUNCTION gone();
ALTER EVENT TRIGGER apiary_sql_drop ENABLE ALWAYS;

-- a procedure could declare a kind up to 0.6 (registering nothing): the
-- update says so
CREATE PROCEDURE declared_proc() LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT 1 $$;
-- 0.11 makes apiary_start anew, with a timeout: objects that call the old
-- one stop the update (rather than be dropped), and the old one's
-- privileges are carried over exactly, grant chains too (and not the
-- default ones a new function has: PUBLIC may not execute it)
CREATE VIEW starts_kept AS SELECT apiary_start('kept', '1') AS id;
ALTER EXTENSION apiary UPDATE;
DROP VIEW starts_kept;
CREATE ROLE regress_granter;
CREATE ROLE regress_grantee;
REVOKE EXECUTE ON FUNCTION apiary_start(text, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apiary_start(text, jsonb, text) TO regress_granter WITH GRANT OPTION;
SET ROLE regress_granter;
GRANT EXECUTE ON FUNCTION apiary_start(text, jsonb, text) TO regress_grantee;
RESET ROLE;
ALTER EXTENSION apiary UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'apiary';
SELECT CASE WHEN a.grantor = p.proowner THEN 'owner' ELSE a.grantor::regrole::text END AS grantor,
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END AS grantee,
       a.is_grantable
FROM pg_proc p, aclexplode(p.proacl) a
WHERE p.oid = 'apiary_start(text, jsonb, text, interval)'::regprocedure
  AND a.grantee <> p.proowner
ORDER BY 2;
-- and they are not the extension's initial privileges, which pg_dump
-- would leave out: a dump keeps them
SELECT count(*) AS initial_privileges FROM pg_init_privs
WHERE objoid = 'apiary_start(text, jsonb, text, interval)'::regprocedure;
GRANT EXECUTE ON FUNCTION apiary_start(text, jsonb, text, interval) TO PUBLIC;
REVOKE EXECUTE ON FUNCTION apiary_start(text, jsonb, text, interval) FROM regress_granter CASCADE;
DROP ROLE regress_granter, regress_grantee;
DROP PROCEDURE declared_proc();
-- registrations name their functions by signature since 0.10
SELECT name, fn FROM apiary.functions ORDER BY name;
-- the update put the pending task in the ready queue, and it runs
SELECT apiary_result('queued-before-upgrade', '60 s');
SELECT apiary_start('kept', '41', 'after-upgrade');
SELECT apiary_result('after-upgrade', '60 s');
-- 0.3 added row-level security to the journal and the apiary_admin role
SELECT relname, relrowsecurity FROM pg_class
WHERE relnamespace = 'apiary'::regnamespace AND relkind = 'r' ORDER BY 1;
SELECT rolcanlogin FROM pg_roles WHERE rolname = 'apiary_admin';

-- the objects of an updated installation are those of a fresh one
SELECT pg_describe_object(classid, objid, objsubid) AS object
FROM pg_depend
WHERE refclassid = 'pg_extension'::regclass
  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'apiary')
  AND deptype = 'e'
ORDER BY 1;
DROP FUNCTION kept(int);
