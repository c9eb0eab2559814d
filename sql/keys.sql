--
-- Keyed calls: exactly once per key.
--
CREATE TABLE runs (n serial PRIMARY KEY, tag text);
CREATE FUNCTION record_run(tag text) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  INSERT INTO runs (tag) VALUES (tag) RETURNING n
$$;

-- The first call with a key runs; a retry returns the recorded output.
SELECT apiary_invoke('record_run', '{"tag": "a"}', 'order-1');
SELECT apiary_invoke('record_run', '{"tag": "a"}', 'order-1');
SELECT count(*) FROM runs;
-- Equal arguments are equal JSON, however they are spelt.
SELECT apiary_invoke('record_run', '{ "tag" : "a" }', 'order-1');
-- Another key runs again.
SELECT apiary_invoke('record_run', '{"tag": "a"}', 'order-2');
SELECT count(*) FROM runs;

-- The journal records each keyed call.
SELECT role, key, function, args, output, parent_key,
       xid IS NOT NULL AS has_xid, finished_at >= started_at AS timed
FROM apiary.invocations ORDER BY key;

-- A key names one call: reuse with other arguments or another function fails.
SELECT apiary_invoke('record_run', '{"tag": "b"}', 'order-1');
CREATE FUNCTION other_run(tag text) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT 0 $$;
SELECT apiary_invoke('other_run', '{"tag": "a"}', 'order-1');

-- The key commits with the caller: rolled back, it runs again next time.
BEGIN;
SELECT apiary_invoke('record_run', '{"tag": "c"}', 'order-3');
ROLLBACK;
SELECT count(*) FROM apiary.invocations WHERE key = 'order-3';
SELECT apiary_invoke('record_run', '{"tag": "c"}', 'order-3');
SELECT count(*) FROM runs WHERE tag = 'c';

-- A failed keyed call records nothing, so a retry runs it.
CREATE TABLE flaky_state (fail bool);
INSERT INTO flaky_state VALUES (true);
CREATE FUNCTION flaky() RETURNS text LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  IF (SELECT fail FROM flaky_state) THEN
    RAISE EXCEPTION 'not yet';
  END IF;
  INSERT INTO runs (tag) VALUES ('flaky');
  RETURN 'done';
END $$;
SELECT apiary_invoke('flaky', '{}', 'flaky-1');
SELECT count(*) FROM apiary.invocations WHERE key = 'flaky-1';
UPDATE flaky_state SET fail = false;
SELECT apiary_invoke('flaky', '{}', 'flaky-1');
UPDATE flaky_state SET fail = true;
SELECT apiary_invoke('flaky', '{}', 'flaky-1');

-- Within one transaction the second call also returns the first's output.
BEGIN;
SELECT apiary_invoke('record_run', '{"tag": "d"}', 'order-4');
SELECT apiary_invoke('record_run', '{"tag": "d"}', 'order-4');
COMMIT;
SELECT count(*) FROM runs WHERE tag = 'd';

-- NULL and void outputs are recorded too.
CREATE FUNCTION run_quietly(tag text) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  INSERT INTO runs (tag) VALUES (tag) RETURNING NULL::int
$$;
SELECT apiary_invoke('run_quietly', '"q"', 'quiet-1') IS NULL AS is_null;
SELECT apiary_invoke('run_quietly', '"q"', 'quiet-1') IS NULL AS is_null;
SELECT count(*) FROM runs WHERE tag = 'q';

-- Keys belong to the calling role: two roles may use the same key.
CREATE ROLE apiary_alice;
CREATE ROLE apiary_bob;
GRANT INSERT, SELECT ON runs TO apiary_alice, apiary_bob;
GRANT USAGE ON SEQUENCE runs_n_seq TO apiary_alice, apiary_bob;
SET ROLE apiary_alice;
SELECT apiary_invoke('record_run', '{"tag": "alice"}', 'shared-key')::int > 0 AS ran;
SET ROLE apiary_bob;
SELECT apiary_invoke('record_run', '{"tag": "bob"}', 'shared-key')::int > 0 AS ran;
-- Nobody but the journal's owner may write the journal directly.
INSERT INTO apiary.invocations VALUES ('apiary_bob', 'forged', 'record_run', '{}', '1', NULL, '1', now());
RESET ROLE;
SELECT role, key, args FROM apiary.invocations WHERE key = 'shared-key' ORDER BY role::text;

-- Keys are bounded in size.
SELECT apiary_invoke('record_run', '{"tag": "long"}', repeat('k', 1025));
SELECT apiary_invoke('record_run', '{"tag": "long"}', repeat('k', 1024))::int > 0 AS ran;
-- An empty key is an error (a client's unset key would make every call
-- one); NULL means no key.
SELECT apiary_invoke('record_run', '{"tag": "e"}', '');
SELECT apiary_invoke('record_run', '{"tag": "f"}', NULL) <> apiary_invoke('record_run', '{"tag": "f"}', NULL) AS different;

-- apiary writes the journal directly, by column number: a column added to
-- it stops keyed calls with an error that says what to do (its default
-- and constraints would not apply); dropped again, it changes nothing.
ALTER TABLE apiary.invocations ADD COLUMN note text NOT NULL DEFAULT 'n/a';
SELECT apiary_invoke('record_run', '{"tag": "noted"}', 'noted');
ALTER TABLE apiary.invocations DROP COLUMN note;
SELECT apiary_invoke('record_run', '{"tag": "noted"}', 'noted')::int > 0 AS ran;
SELECT key, function FROM apiary.invocations WHERE key = 'noted';

-- A keyed call writes the journal: not during a parallel operation, where
-- a function wrongly marked PARALLEL SAFE would make it (a clear error,
-- where the write itself raised an internal one).
CREATE FUNCTION keyed_in_parallel() RETURNS jsonb LANGUAGE plpgsql PARALLEL SAFE
AS $$ BEGIN RETURN apiary_invoke('record_run', '{"tag": "par"}', 'par-key'); END $$;
SET force_parallel_mode = on;
SET parallel_setup_cost = 0;
SELECT keyed_in_parallel();
-- (a call without a key reads the registry as of the transaction's
-- snapshot there: a parallel operation can take no newer one)
CREATE FUNCTION plain_in_parallel() RETURNS jsonb LANGUAGE plpgsql PARALLEL SAFE
AS $$ BEGIN RETURN apiary_invoke('parallel_peek'); END $$;
CREATE FUNCTION parallel_peek() RETURNS text LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT 'peeked' $$;
SELECT plain_in_parallel(), plain_in_parallel();
RESET force_parallel_mode;
RESET parallel_setup_cost;
SELECT keyed_in_parallel()::int > 0 AS ran;

-- A key recorded already returns its output whatever became of its
-- function since (unregistered here): the retry of a call that committed.
CREATE FUNCTION short_lived(x int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT x + 1 $$;
SELECT apiary_invoke('short_lived', '{"x": 1}', 'short-lived');
ALTER FUNCTION short_lived(int) RESET apiary.kind;
SELECT apiary_invoke('short_lived', '{"x": 1}', 'short-lived');
SELECT apiary_invoke('short_lived', '{"x": 1}', 'short-lived-2');
DROP FUNCTION short_lived(int);
