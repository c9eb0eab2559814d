--
-- Security: a queued task never gains privilege, journal rows are private
-- to their role, and bad input is refused with a clear error.
--
-- err runs a statement as the current role and shows the error it raises.
CREATE FUNCTION err(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
GRANT EXECUTE ON FUNCTION err(text) TO PUBLIC;

-- Three roles: an owner of functions, a stranger, and an administrator.
CREATE ROLE regress_owner;
CREATE ROLE regress_stranger;
CREATE ROLE regress_admin IN ROLE apiary_admin;
CREATE SCHEMA sec AUTHORIZATION regress_owner;
CREATE SCHEMA sec_a AUTHORIZATION regress_owner;
CREATE SCHEMA sec_b AUTHORIZATION regress_owner;
GRANT USAGE ON SCHEMA sec, sec_a, sec_b TO PUBLIC;

SET ROLE regress_owner;
CREATE FUNCTION sec.s_whoami() RETURNS text LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT current_user::text $$;
CREATE FUNCTION sec.s_secret() RETURNS text LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT 'the secret' $$;
REVOKE EXECUTE ON FUNCTION sec.s_secret() FROM PUBLIC;
CREATE FUNCTION sec.s_echo(x jsonb) RETURNS jsonb LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT x $$;
-- resolves "label" through the search_path it runs with
CREATE TABLE sec_a.label (v text);
CREATE TABLE sec_b.label (v text);
INSERT INTO sec_a.label VALUES ('a');
INSERT INTO sec_b.label VALUES ('b');
GRANT SELECT ON sec_a.label, sec_b.label TO PUBLIC;
CREATE FUNCTION sec.s_label() RETURNS text LANGUAGE plpgsql
SET apiary.kind = 'readonly' AS $$
BEGIN
  RETURN (SELECT v FROM label);
END $$;
-- queues n tasks
CREATE FUNCTION sec.s_fan(n int) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  FOR i IN 1..n LOOP
    PERFORM apiary_queue('s_whoami');
  END LOOP;
  RETURN n;
END $$;
-- queues n tasks after three tries that queue and roll back
CREATE FUNCTION sec.s_fan_retried(n int) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  FOR r IN 1..3 LOOP
    BEGIN
      IF r > 1 THEN
        PERFORM apiary_queue('s_whoami') FROM generate_series(1, n / 2);
      END IF;
      BEGIN
        PERFORM apiary_queue('s_whoami') FROM generate_series(1, n / 2);
      EXCEPTION WHEN division_by_zero THEN NULL;
      END;
      RAISE EXCEPTION 'undone';
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
  END LOOP;
  PERFORM apiary_queue('s_whoami') FROM generate_series(1, n);
  RETURN n;
END $$;
-- a future made up from an id
CREATE FUNCTION sec.s_forge(id bigint) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RETURN apiary_queue('s_echo', jsonb_build_object('x', jsonb_build_object('apiary_future', id)));
END $$;
-- returns n bytes
CREATE FUNCTION sec.s_big(n int) RETURNS text LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT repeat('x', n) $$;
CREATE FUNCTION sec.s_big_external(n int) RETURNS text LANGUAGE sql
SET apiary.kind = 'external' AS $$ SELECT repeat('x', n) $$;
RESET ROLE;

-- A task runs as the role that queued it, not as the executor's superuser.
SET ROLE regress_owner;
SELECT apiary_start('s_whoami', '{}', 'who-sec');
RESET ROLE;
SET ROLE regress_stranger;
SELECT apiary_start('s_whoami', '{}', 'who-sec');
RESET ROLE;
SET ROLE regress_owner;
SELECT apiary_result('who-sec', '60 s');
RESET ROLE;
SET ROLE regress_stranger;
SELECT apiary_result('who-sec', '60 s');
RESET ROLE;
-- session_user is that role too, and is_superuser says what it is.
CREATE FUNCTION sec.s_session() RETURNS jsonb LANGUAGE sql
SET apiary.kind = 'transactional'
AS $$ SELECT jsonb_build_object('session_user', session_user, 'is_superuser', current_setting('is_superuser')) $$;
ALTER FUNCTION sec.s_session() OWNER TO regress_owner;
SET ROLE regress_stranger;
SELECT apiary_start('s_session', '{}', 'session-sec');
SELECT apiary_result('session-sec', '60 s');
RESET ROLE;

-- It runs with the search_path it was queued with.
SET ROLE regress_owner;
SET search_path = sec_b, public;
SELECT apiary_start('s_label', '{}', 'label-b');
RESET search_path;
SELECT apiary_result('label-b', '60 s');
RESET ROLE;

-- EXECUTE is checked when a task is queued ...
SET ROLE regress_stranger;
SELECT err($$SELECT apiary_start('s_secret', '{}', 'steal')$$);
RESET ROLE;
-- ... and again when it runs: a REVOKE in between wins.
GRANT EXECUTE ON FUNCTION sec.s_secret() TO regress_stranger;
BEGIN;
SET LOCAL ROLE regress_stranger;
SELECT apiary_start('s_secret', '{}', 'revoked');
RESET ROLE;
REVOKE EXECUTE ON FUNCTION sec.s_secret() FROM regress_stranger;
COMMIT;
SET ROLE regress_stranger;
SELECT err($$SELECT apiary_result('revoked', '60 s')$$);
RESET ROLE;

-- Journal rows are private: each role sees its own, apiary_admin all.
SET ROLE regress_owner;
SELECT apiary_invoke('s_whoami', '{}', key => 'same-key');
SELECT role, id, state FROM apiary.workflows ORDER BY role::text, id;
SELECT role, key, output FROM apiary.invocations ORDER BY role::text, key;
RESET ROLE;
SET ROLE regress_stranger;
-- the same key in another role is another call
SELECT apiary_invoke('s_whoami', '{}', key => 'same-key');
SELECT role, id, state FROM apiary.workflows ORDER BY role::text, id;
SELECT count(*) AS tasks_seen FROM apiary.tasks;
RESET ROLE;
SET ROLE regress_admin;
SELECT role, id, state FROM apiary.workflows
WHERE role::text LIKE 'regress_%' ORDER BY role::text, id;
SELECT role, key FROM apiary.invocations WHERE key = 'same-key' ORDER BY role::text;
RESET ROLE;

-- So are provenance rows, through the apiary.provenance view as well.
INSERT INTO apiary.provenance_rows (begin_lsn, n, role, workflow, task, function, xid,
                                    relation, relname, operation, "row", at)
VALUES ('0/1', 1, 'regress_owner', 'who-sec', 1, 's_whoami', '1', NULL, 'sec.label',
        'read', '{"v": "owners only"}', now());
SET ROLE regress_owner;
SELECT relname, "row" FROM apiary.provenance;
RESET ROLE;
SET ROLE regress_stranger;
SELECT count(*) AS provenance_seen FROM apiary.provenance;
RESET ROLE;
DELETE FROM apiary.provenance_rows WHERE begin_lsn = '0/1';

-- A keyed call is the role's that makes it: inside a SECURITY DEFINER
-- function, its owner's, which its caller can neither read nor pre-record.
SET ROLE regress_owner;
CREATE FUNCTION sec.s_definer() RETURNS jsonb LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, public
SET apiary.kind = 'transactional' AS $$ SELECT apiary_invoke('s_secret', '{}', 'definer-key') $$;
RESET ROLE;
SET ROLE regress_stranger;
SELECT apiary_invoke('s_definer');
SELECT count(*) AS definer_keys_seen FROM apiary.invocations WHERE key = 'definer-key';
RESET ROLE;
SELECT role, key, output FROM apiary.invocations WHERE key = 'definer-key';

-- Schema USAGE is checked as a call by name would: when a task is queued,
-- and when it runs.
CREATE SCHEMA sec_hidden AUTHORIZATION regress_owner;
SET ROLE regress_owner;
CREATE FUNCTION sec_hidden.s_hidden() RETURNS text LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT 'behind the schema' $$;
RESET ROLE;
SET ROLE regress_stranger;
SELECT err($$SELECT apiary_invoke('s_hidden')$$);
SELECT err($$SELECT apiary_start('s_hidden', '{}', 'hidden')$$);
RESET ROLE;
GRANT USAGE ON SCHEMA sec_hidden TO regress_stranger;
BEGIN;
SET LOCAL ROLE regress_stranger;
SELECT apiary_start('s_hidden', '{}', 'hidden');
RESET ROLE;
REVOKE USAGE ON SCHEMA sec_hidden FROM regress_stranger;
COMMIT;
SET ROLE regress_stranger;
SELECT err($$SELECT apiary_result('hidden', '60 s')$$);
RESET ROLE;
-- ... and on every call, also after another role's call in the same
-- session has planned it (a default to fill in, or an inlined SQL body).
SET ROLE regress_owner;
CREATE FUNCTION sec_hidden.s_default(x int DEFAULT 1) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT x $$;
CREATE FUNCTION sec.s_inlined() RETURNS text LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT 'inlined' $$;
REVOKE EXECUTE ON FUNCTION sec.s_inlined() FROM PUBLIC;
SELECT apiary_invoke('s_default'), apiary_invoke('s_inlined');
RESET ROLE;
SET ROLE regress_stranger;
SELECT err($$SELECT apiary_invoke('s_default')$$);
SELECT err($$SELECT apiary_invoke('s_inlined')$$);
RESET ROLE;
-- A registration in a schema the role cannot use does not stand in the
-- way of its own renames, which the registry looks at.
CREATE SCHEMA sec_stranger AUTHORIZATION regress_stranger;
SET ROLE regress_stranger;
CREATE TABLE sec_stranger.own (a int);
ALTER TABLE sec_stranger.own RENAME TO own_renamed;
RESET ROLE;
DROP SCHEMA sec_stranger CASCADE;

-- Another role's workflow is not found, whatever one does with it ...
SET ROLE regress_owner;
SELECT apiary_start('s_whoami', '{}', 'owners-only');
RESET ROLE;
SET ROLE regress_stranger;
SELECT err($$SELECT apiary_result('owners-only', '60 s')$$);
SELECT err($$SELECT * FROM apiary_status('owners-only')$$);
SELECT err($$SELECT apiary_cancel('owners-only')$$);
SELECT err($$SELECT apiary_resume('owners-only')$$);
RESET ROLE;
-- ... except for apiary_admin.
SET ROLE regress_admin;
SELECT apiary_result('owners-only', '60 s');
SELECT function, state FROM apiary_status('owners-only');
-- an id two roles use is ambiguous to an administrator
SELECT err($$SELECT apiary_result('who-sec', '60 s')$$);
SELECT apiary_graph('who-sec');
RESET ROLE;

-- A future must come from the same workflow: a forged one is refused.
SET ROLE regress_owner;
SELECT task AS owners_task FROM apiary_status('owners-only') \gset
RESET ROLE;
SET ROLE regress_stranger;
SELECT apiary_start('s_forge', jsonb_build_object('id', :owners_task), 'forged');
SELECT regexp_replace(err($$SELECT apiary_result('forged', '60 s')$$), 'future \d+', 'future N') AS err;
RESET ROLE;

-- Futures mean something to apiary_queue only.
SELECT err($$SELECT apiary_start('s_echo', '{"x": {"apiary_future": 1}}')$$);
SELECT err($$SELECT apiary_invoke('s_echo', '{"x": {"apiary_future": 1}}')$$);
SELECT err($$SELECT apiary_invoke('s_echo', '[{"apiary_future": 1}]')$$);
-- nested deeper, it is plain data
SELECT apiary_invoke('s_echo', '{"x": {"y": {"apiary_future": 1}}}');

-- A task may queue at most apiary.max_queued tasks (100 in this test's
-- server): a runaway fan-out fails, and nothing it queued remains.
SELECT apiary_start('s_fan', '{"n": 100000}', 'runaway');
SELECT err($$SELECT apiary_result('runaway', '60 s')$$);
SELECT count(*) AS queued_by_runaway FROM apiary.tasks WHERE workflow = 'runaway';
SELECT apiary_start('s_fan', '{"n": 100}', 'at-the-limit');
SELECT apiary_result('at-the-limit', '60 s');
-- what rolled-back subtransactions queued is not counted
SELECT apiary_start('s_fan_retried', '{"n": 100}', 'retried-fan');
SELECT apiary_result('retried-fan', '60 s');
SELECT count(*) AS queued_by_retried_fan FROM apiary.tasks WHERE workflow = 'retried-fan';

-- Outputs to be recorded are bounded by apiary.max_output_size (1 MB here).
SELECT apiary_start('s_big', '{"n": 2000000}', 'too-big');
SELECT err($$SELECT apiary_result('too-big', '60 s')$$);
SELECT err($$SELECT apiary_invoke('s_big', '{"n": 2000000}', key => 'too-big')$$);
SELECT count(*) AS recorded FROM apiary.invocations WHERE key = 'too-big';
-- an external task's output refused is not retried: it would come again,
-- after the function's effects outside had been repeated
SELECT apiary_start('s_big_external', '{"n": 2000000}', 'too-big-external');
SELECT err($$SELECT apiary_result('too-big-external', '60 s')$$);
SELECT attempts FROM apiary.tasks WHERE workflow = 'too-big-external';
-- unkeyed calls record nothing, and are not bounded
SELECT length(apiary_invoke('s_big', '{"n": 2000000}')::text);
-- also when the function hands back a value still toasted, as a column
-- of a table it reads is (such an output was measured by its pointer)
CREATE TABLE s_docs (id int PRIMARY KEY, doc jsonb);
ALTER TABLE s_docs ALTER doc SET STORAGE EXTERNAL;
INSERT INTO s_docs VALUES (1, jsonb_build_object('pad', repeat('x', 2000000)));
CREATE FUNCTION s_doc(d int) RETURNS jsonb LANGUAGE sql STABLE
AS $$ SELECT doc FROM s_docs WHERE id = d $$;
SELECT apiary_register('s_doc(int)', 'readonly');
SELECT apiary_start('s_doc', '[1]', 'toasted-big');
SELECT err($$SELECT apiary_result('toasted-big', '60 s')$$);
SELECT err($$SELECT apiary_invoke('s_doc', '[1]', key => 'toasted-big')$$);

-- Bad input: a clear error and nothing written.
SELECT err($$SELECT apiary_start(NULL, '{}')$$);
SELECT err($$SELECT apiary_start('s_whoami', NULL)$$);
SELECT err($$SELECT apiary_start('nosuch', '{}')$$);
SELECT err($$SELECT apiary_start('s_whoami', '{')$$);
SELECT err($$SELECT apiary_start('s_whoami', '{}', repeat('k', 10240))$$);
SELECT err($$SELECT apiary_invoke('s_whoami', '{}', repeat('k', 10240))$$);
SELECT err($$SELECT apiary_result(NULL)$$);
SELECT err($$SELECT apiary_result(repeat('k', 10240), '1 ms')$$);
SELECT err($$SELECT * FROM apiary_status(NULL)$$);
SELECT err($$SELECT apiary_cancel(NULL)$$);
SELECT err($$SELECT apiary_resume(NULL)$$);
SELECT err($$SELECT apiary_queue('s_whoami', '{}')$$);
SELECT err($$SELECT apiary_queue(NULL, NULL)$$);
SELECT err($$SELECT apiary_task_key()$$);
SELECT count(*) AS nothing_written FROM apiary.workflows
WHERE id LIKE 'kkk%' OR function = 'nosuch';

-- A role sees its own rows whatever its name: one whose name differs from
-- another's only in case sees none of the other's, and one with a dot in
-- its name reads the journal as any other does.
CREATE ROLE "Regress_Owner";
CREATE ROLE "regress.dotted";
SET ROLE "Regress_Owner";
SELECT (SELECT count(*) FROM apiary.workflows) AS workflows,
       (SELECT count(*) FROM apiary.tasks) AS tasks,
       (SELECT count(*) FROM apiary.invocations) AS invocations;
SELECT apiary_start('s_whoami', '{}', 'who-sec');
SELECT apiary_result('who-sec', '60 s');
SELECT role, id, output FROM apiary.workflows;
SELECT apiary_graph('who-sec') LIKE '%s_whoami%' AS own_graph;
RESET ROLE;
SET ROLE "regress.dotted";
SELECT count(*) AS tasks FROM apiary.tasks;
RESET ROLE;

-- Users read the journal; they cannot write it.
SET ROLE regress_stranger;
SELECT err($$DELETE FROM apiary.tasks$$);
SELECT err($$UPDATE apiary.workflows SET state = 'done'$$);
SELECT err($$INSERT INTO apiary.invocations VALUES ('regress_owner', 'k', 'f', '{}', NULL, NULL, '1', now(), now())$$);
SELECT err($$SELECT apiary.cancel_workflow('regress_owner'::regrole, 'owners-only')$$);
RESET ROLE;

-- A task runs only a function of the owner its function had when it was
-- queued: a name freed meanwhile (its function dropped) and taken by
-- another role's function does not run that one with the task's rights.
CREATE SCHEMA sec_other AUTHORIZATION regress_stranger;
SET ROLE regress_owner;
CREATE FUNCTION sec.s_later() RETURNS text LANGUAGE sql AS $$ SELECT 'the owner''s' $$;
SELECT apiary_register('sec.s_later()');
BEGIN;
SELECT apiary_start('s_later', '{}', 'name-taken');
DROP FUNCTION sec.s_later();
SET LOCAL ROLE regress_stranger;
CREATE FUNCTION sec_other.s_later() RETURNS text LANGUAGE sql
AS $$ SELECT 'the stranger''s, run as ' || current_user $$;
SELECT apiary_register('sec_other.s_later()');
COMMIT;
SET ROLE regress_owner;
SELECT err($$SELECT apiary_result('name-taken', '60 s')$$);
SELECT state, attempts FROM apiary_status('name-taken');
-- the owner may drop and create its function again (a redeploy): waiting
-- tasks run the new one
CREATE FUNCTION sec.s_again() RETURNS text LANGUAGE sql AS $$ SELECT 'first' $$;
SELECT apiary_register('sec.s_again()');
BEGIN;
SELECT apiary_start('s_again', '{}', 'redeployed');
DROP FUNCTION sec.s_again();
CREATE FUNCTION sec.s_again() RETURNS text LANGUAGE sql AS $$ SELECT 'second' $$;
SELECT apiary_register('sec.s_again()');
COMMIT;
SELECT apiary_result('redeployed', '60 s');
RESET ROLE;

-- apiary's own statements run as the journal's owner with pg_catalog alone
-- in their search_path: an operator of the caller's schema, first in the
-- caller's path, never stands in for pg_catalog's there (a registration
-- compared OIDs with IS NOT DISTINCT FROM, which looks its operator up by
-- name, and ran a role's operator as the owner).
SET ROLE regress_owner;
CREATE TABLE sec.op_calls (who text);
CREATE FUNCTION sec.op_eq(oid, oid) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE 'INSERT INTO sec.op_calls VALUES (current_user)';
  RETURN $1 OPERATOR(pg_catalog.=) $2;
END $$;
CREATE OPERATOR sec.= (leftarg = oid, rightarg = oid, function = sec.op_eq);
GRANT INSERT ON sec.op_calls TO PUBLIC;
SET search_path = sec, pg_catalog, public;
SELECT apiary_register('sec.s_echo(jsonb)');
SELECT apiary_register('sec.s_echo(jsonb)');
SELECT err($$SELECT apiary_invoke('s_whoami_', '{}')$$);
RESET search_path;
SELECT count(*) AS operator_calls_as_another_role
FROM sec.op_calls WHERE who <> 'regress_owner';
RESET ROLE;

DROP SCHEMA sec, sec_a, sec_b, sec_hidden, sec_other CASCADE;
DELETE FROM apiary.invocations WHERE role IN (SELECT oid FROM pg_roles WHERE rolname ILIKE 'regress%');
DELETE FROM apiary.tasks WHERE role IN (SELECT oid FROM pg_roles WHERE rolname ILIKE 'regress%');
DELETE FROM apiary.workflows WHERE role IN (SELECT oid FROM pg_roles WHERE rolname ILIKE 'regress%');
DROP ROLE regress_owner, regress_stranger, regress_admin, "Regress_Owner", "regress.dotted";
