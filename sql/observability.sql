--
-- Observability: per-function statistics, workflow graphs, retention.
--
SELECT apiary_stats_reset();
-- a failed attempt rolls back, a sequence does not
CREATE SEQUENCE obs_attempts;
CREATE FUNCTION obs_add(a int, b int) RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT a + b $$;
CREATE FUNCTION obs_fail() RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  RAISE EXCEPTION 'always fails' USING ERRCODE = 'P0001';
END $$;
-- fails twice, then succeeds: an external function is retried
CREATE FUNCTION obs_flaky() RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'external' AS $$
DECLARE k int := nextval('obs_attempts');
BEGIN
  IF k < 3 THEN
    RAISE EXCEPTION 'not yet (%)', k;
  END IF;
  RETURN k;
END $$;
SELECT apiary_register('obs_flaky()', 'external', max_attempts => 5);
CREATE FUNCTION obs_fan(n int) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
DECLARE parts jsonb := '[]';
BEGIN
  FOR i IN 1..n LOOP
    parts := parts || jsonb_build_array(apiary_queue('obs_add', jsonb_build_object('a', i, 'b', i)));
  END LOOP;
  RETURN apiary_queue('obs_sum', jsonb_build_object('x', parts->0, 'y', parts->1));
END $$;
CREATE FUNCTION obs_sum(x int, y int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT x + y $$;

-- Synchronous calls count, and so do failed ones, though they roll back.
SELECT apiary_invoke('obs_add', '[1, 2]');
SELECT apiary_invoke('obs_add', '[3, 4]', key => 'obs-old');
SELECT apiary_invoke('obs_add', '[3, 4]', key => 'obs-new');
BEGIN;
SELECT apiary_invoke('obs_fail');
ROLLBACK;
-- Tasks count too: every attempt, with its retries.
SELECT apiary_start('obs_flaky', '{}', 'obs-flaky');
SELECT apiary_result('obs-flaky', '60 s');
SELECT apiary_start('obs_fan', '{"n": 2}', 'obs-fan');
SELECT apiary_result('obs-fan', '60 s');

SELECT function, calls, errors, retries,
       total_ms >= 0 AS total, mean_ms * calls BETWEEN total_ms * 0.999 AND total_ms * 1.001 AS mean,
       min_ms <= p50_ms AND p50_ms <= p99_ms AND p99_ms <= max_ms AS ordered
FROM apiary.stats WHERE function LIKE 'obs_%' ORDER BY function;
-- A failed attempt of a workflow cancelled meanwhile is no retry.
CREATE FUNCTION obs_conflict() RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM pg_sleep(1);
  RAISE EXCEPTION 'conflict' USING ERRCODE = '40001';
END $$;
SELECT apiary_start('obs_conflict', '{}', 'cancelled-conflict');
SELECT wait_until($c$EXISTS (SELECT FROM pg_stat_activity
                             WHERE backend_type = 'apiary executor' AND wait_event = 'PgSleep')$c$);
SELECT apiary_cancel('cancelled-conflict');
SELECT wait_until($c$EXISTS (SELECT FROM apiary.stats WHERE function = 'obs_conflict')$c$);
SELECT calls, errors, retries FROM apiary.stats WHERE function = 'obs_conflict';
SELECT apiary_stats_reset();
SELECT count(*) FROM apiary.stats WHERE function LIKE 'obs_%';
-- resetting is for superusers (and those it is granted to)
CREATE ROLE regress_obs;
SET ROLE regress_obs;
SELECT apiary_stats_reset();
SELECT count(*) >= 0 AS can_read FROM apiary.stats;
RESET ROLE;
DROP ROLE regress_obs;

-- A workflow as a graph, for Graphviz: tasks, parent edges (solid),
-- futures as arguments (dashed), returned futures (dotted).  Task ids and
-- run times vary from run to run.
SELECT regexp_replace(regexp_replace(regexp_replace(apiary_graph('obs-fan'),
         '\mt\d+', 'tN', 'g'), '"\d+: ', '"N: ', 'g'), '[0-9.]+ ms', 'N ms', 'g');
SELECT apiary_graph('no-such-workflow');

-- Retention: finished workflows older than apiary.retention go, with their
-- tasks, in batches, by the launcher; recent ones and running ones stay,
-- and so does a finished one whose task, queued and not waited for, still
-- runs, until it has finished.  Retention needs no executors: here the
-- last one leaves once its task is done.
CREATE FUNCTION obs_gated() RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT 1 FROM pg_advisory_xact_lock(4545) $$;
CREATE FUNCTION obs_leaves() RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM apiary_queue('obs_gated', '{}');
  RETURN 1;
END $$;
SELECT pg_advisory_lock(4545);
SELECT apiary_start('obs_leaves', '{}', 'obs-left');
SELECT apiary_result('obs-left', '60 s');
SELECT wait_until($c$EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory'
  AND objid = 4545 AND NOT granted)$c$);
-- the graph shows the task its executor runs as running, as apiary_status does
SELECT regexp_replace(regexp_replace(regexp_replace(apiary_graph('obs-left'),
         '\mt\d+', 'tN', 'g'), '"\d+: ', '"N: ', 'g'), '[0-9.]+ ms', 'N ms', 'g');
UPDATE apiary.workflows SET finished_at = now() - interval '3 days' WHERE id IN ('obs-fan', 'obs-left');
UPDATE apiary.invocations SET finished_at = now() - interval '3 days' WHERE key = 'obs-old';
ALTER SYSTEM SET apiary.retention = '2d';
ALTER SYSTEM SET apiary.workers = 0;
SELECT pg_reload_conf();
SELECT wait_until($c$NOT EXISTS (SELECT FROM apiary.workflows WHERE id = 'obs-fan')$c$);
SELECT id FROM apiary.workflows WHERE id LIKE 'obs-%' ORDER BY id;
SELECT count(*) AS tasks_left FROM apiary.tasks WHERE workflow = 'obs-fan';
SELECT key FROM apiary.invocations WHERE key LIKE 'obs-%' ORDER BY key;
SELECT pg_advisory_unlock(4545);
SELECT wait_until($c$NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'apiary executor')$c$);
SELECT state FROM apiary.tasks WHERE workflow = 'obs-left' ORDER BY id;
-- a reload prunes at once
SELECT pg_reload_conf();
SELECT wait_until($c$NOT EXISTS (SELECT FROM apiary.workflows WHERE id = 'obs-left')$c$);
SELECT id FROM apiary.workflows WHERE id LIKE 'obs-%' ORDER BY id;
ALTER SYSTEM RESET apiary.retention;
ALTER SYSTEM RESET apiary.workers;
SELECT pg_reload_conf();

-- apiary.ready: once executors have taken apiary.ready_vacuum_threshold
-- ready rows, the launcher vacuums the table (a manual vacuum, to the
-- statistics), so that claims do not walk the dead rows' index entries.
ALTER SYSTEM SET apiary.ready_vacuum_threshold = 20;
SELECT pg_reload_conf();
CREATE TEMP TABLE obs_vacuums AS SELECT vacuum_count FROM pg_stat_all_tables
WHERE relid = 'apiary.ready'::regclass;
SELECT count(apiary_start('obs_add', jsonb_build_object('a', i, 'b', 0), 'obs-vac-' || i))
FROM generate_series(1, 60) i;
SELECT count(*) AS results FROM generate_series(1, 60) i
WHERE apiary_result('obs-vac-' || i, '60 s') = to_jsonb(i);
SELECT wait_until($c$(SELECT vacuum_count FROM pg_stat_all_tables
  WHERE relid = 'apiary.ready'::regclass) > (TABLE obs_vacuums)$c$);
SELECT vacuum_count > (TABLE obs_vacuums) AS ready_vacuumed FROM pg_stat_all_tables
WHERE relid = 'apiary.ready'::regclass;
ALTER SYSTEM RESET apiary.ready_vacuum_threshold;
SELECT pg_reload_conf();

-- Provenance: with apiary.provenance = writes, the rows apiary functions
-- write are read back from the WAL by logical decoding (apiary's own output
-- plugin) and attributed to the task or call that wrote them.
SELECT setting, state FROM apiary.provenance_status;
ALTER SYSTEM SET apiary.provenance = 'writes';
SELECT pg_reload_conf();
-- (a session applies a reload between statements, never inside one, and
-- provenance_status reads this session's setting: a new session starts
-- with the reload)
\c
SELECT wait_until($c$EXISTS (SELECT FROM apiary.provenance_status WHERE state = 'recording')$c$);
SELECT setting, wal_level, slot, state, failed_at FROM apiary.provenance_status;
SELECT plugin FROM pg_replication_slots WHERE slot_name = 'apiary_provenance';
CREATE TABLE obs_items (id int PRIMARY KEY, qty int);
INSERT INTO obs_items VALUES (1, 10), (2, 20), (50, 0);
CREATE FUNCTION obs_write(id int, qty int) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  INSERT INTO obs_items VALUES (100 + id, qty);
  UPDATE obs_items SET qty = obs_write.qty WHERE obs_items.id = obs_write.id;
  DELETE FROM obs_items WHERE obs_items.id = 2 AND obs_write.id = 1;
  RETURN id;
END $$;
CREATE FUNCTION obs_write_fail(id int) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  INSERT INTO obs_items VALUES (300 + id, 0);
  RAISE EXCEPTION 'obs_write_fail after writing';
END $$;
-- a caller's writes are its own, a nested call's are the nested call's,
-- and a nested call rolled back wrote nothing
CREATE FUNCTION obs_outer(id int) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  UPDATE obs_items SET qty = -1 WHERE obs_items.id = 50;
  PERFORM apiary_invoke('obs_write', jsonb_build_object('id', id, 'qty', 44));
  BEGIN
    PERFORM apiary_invoke('obs_write_fail', jsonb_build_object('id', id));
  EXCEPTION WHEN raise_exception THEN NULL;
  END;
  INSERT INTO obs_items VALUES (200 + id, 0);
  RETURN id;
END $$;
-- in a task, and in a synchronous call
SELECT apiary_start('obs_write', '{"id": 1, "qty": 11}', 'obs-writes');
SELECT apiary_result('obs-writes', '60 s');
-- the client's own writes around a synchronous call are not apiary's
BEGIN;
INSERT INTO obs_items VALUES (8, 88);
SELECT apiary_invoke('obs_write', '{"id": 3, "qty": 33}');
INSERT INTO obs_items VALUES (9, 99);
COMMIT;
SELECT apiary_start('obs_outer', '{"id": 4}', 'obs-nested');
SELECT apiary_result('obs-nested', '60 s');
SELECT wait_until($c$(SELECT count(*) FROM apiary.provenance WHERE relname = 'public.obs_items') >= 7$c$);
SELECT workflow, task IS NOT NULL AS in_task, function, relation, operation, "row"
FROM apiary.provenance WHERE relname = 'public.obs_items'
ORDER BY workflow NULLS LAST, at, function, operation, "row"::text;
-- a TRUNCATE is recorded, a row per table without an image; a write to a
-- partitioned table is recorded under its partition, with the image for a
-- role that may read the partitioned table
CREATE TABLE obs_parts (id int PRIMARY KEY, note text) PARTITION BY RANGE (id);
CREATE TABLE obs_parts_low PARTITION OF obs_parts FOR VALUES FROM (0) TO (100);
CREATE TABLE obs_scratch (id int);
INSERT INTO obs_scratch VALUES (1), (2);
CREATE ROLE obs_partner;
GRANT SELECT, INSERT ON obs_parts TO obs_partner;
CREATE FUNCTION obs_part_write(id int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ INSERT INTO obs_parts VALUES (id, 'via the parent') RETURNING id $$;
CREATE FUNCTION obs_truncate() RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$ BEGIN TRUNCATE obs_scratch; RETURN 1; END $$;
SET ROLE obs_partner;
SELECT apiary_invoke('obs_part_write', '[5]');
RESET ROLE;
SELECT apiary_invoke('obs_truncate');
SELECT wait_until($c$EXISTS (SELECT FROM apiary.provenance WHERE relname = 'public.obs_scratch')$c$);
SELECT function, relation, operation, "row" FROM apiary.provenance
WHERE relname IN ('public.obs_parts_low', 'public.obs_scratch') ORDER BY relname;
DROP TABLE obs_parts, obs_scratch;
DROP ROLE obs_partner;
-- any role may write a logical decoding message with apiary's prefix: the
-- collector takes only those apiary signed.  Neither a message claiming a
-- write for another workflow, nor one whose sizes point past its end (it
-- crashed the collector, again at each restart), is taken; the collector
-- goes on recording.
CREATE ROLE obs_forger;
GRANT INSERT ON obs_items TO obs_forger;
SET ROLE obs_forger;
BEGIN;
INSERT INTO obs_items VALUES (77, 77);
SELECT pg_logical_emit_message(true, 'apiary',
  decode('02000000' || '0a000000' || repeat('00', 24) || '00000000' || '01000000', 'hex')
  || convert_to('obs_write', 'UTF8') || '\x00'::bytea || convert_to('forged', 'UTF8')
  || '\x00'::bytea || decode(repeat('00', 32), 'hex')) IS NOT NULL AS emitted;
COMMIT;
SELECT pg_logical_emit_message(true, 'apiary',
  '\x010000000000000000000000000000000000000000000000000000000000000001000000000000006600000000000000c2eb0b'::bytea)
  IS NOT NULL AS emitted;
RESET ROLE;
SELECT apiary_invoke('obs_write', '{"id": 6, "qty": 66}');
SELECT wait_until($c$EXISTS (SELECT FROM apiary.provenance WHERE "row"->>'id' = '106')$c$);
SELECT count(*) AS forged FROM apiary.provenance
WHERE workflow = 'forged' OR "row"->>'id' = '77';
SELECT count(*) AS collectors FROM pg_stat_activity WHERE backend_type = 'apiary provenance';
REVOKE INSERT ON obs_items FROM obs_forger;
DROP ROLE obs_forger;
-- a message signed with the server's key is taken only in the transaction
-- it was signed for (not as a copy read from the WAL into another one):
-- made here with the key itself, for another transaction, then for this
CREATE EXTENSION pgcrypto;
CREATE FUNCTION obs_le(v bigint, n int) RETURNS bytea LANGUAGE sql AS $$
  SELECT decode(string_agg(substr(lpad(to_hex(v), 2 * n, '0'), 2 * n - 2 * i - 1, 2), '' ORDER BY i), 'hex')
  FROM generate_series(0, n - 1) i $$;
CREATE FUNCTION obs_signed(xid xid8, workflow text) RETURNS bytea LANGUAGE sql AS $$
  WITH m AS (SELECT obs_le(2, 4) || obs_le(current_user::regrole::oid::bigint, 4) || obs_le(0, 8)
                    || obs_le(xid::text::bigint, 8) || obs_le(0, 8) || obs_le(0, 4) || obs_le(1, 4)
                    || convert_to('obs_write', 'UTF8') || '\x00'::bytea
                    || convert_to(workflow, 'UTF8') || '\x00'::bytea AS body)
  SELECT body || hmac(body, pg_read_binary_file('pg_apiary/provenance.key'), 'sha256') FROM m $$;
BEGIN;
INSERT INTO obs_items VALUES (78, 78);
SELECT pg_logical_emit_message(true, 'apiary',
  obs_signed((pg_current_xact_id()::text::bigint + 1)::text::xid8, 'signed-elsewhere')) IS NOT NULL AS emitted;
COMMIT;
BEGIN;
INSERT INTO obs_items VALUES (79, 79);
SELECT pg_logical_emit_message(true, 'apiary',
  obs_signed(pg_current_xact_id(), 'signed-here')) IS NOT NULL AS emitted;
COMMIT;
SELECT wait_until($c$EXISTS (SELECT FROM apiary.provenance WHERE workflow = 'signed-here')$c$);
SELECT workflow, function, operation, "row" FROM apiary.provenance
WHERE "row"->>'id' IN ('78', '79') ORDER BY workflow;
DROP FUNCTION obs_signed(xid8, text);
DROP FUNCTION obs_le(bigint, int);
DROP EXTENSION pgcrypto;

-- apiary.provenance = all: also the rows each function read, captured by
-- executor hooks in the function's own transaction
ALTER SYSTEM SET apiary.provenance = 'all';
SELECT pg_reload_conf();
-- (a new session, with the reload)
\c
SELECT current_setting('apiary.provenance');
CREATE TABLE obs_shelf (id int PRIMARY KEY, label text);
INSERT INTO obs_shelf SELECT g, 'shelf ' || g FROM generate_series(1, 5) g;
CREATE FUNCTION obs_read(id int) RETURNS text LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT label FROM obs_shelf WHERE obs_shelf.id = obs_read.id $$;
CREATE FUNCTION obs_count() RETURNS bigint LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT count(*) FROM obs_shelf $$;
SELECT apiary_start('obs_read', '{"id": 2}', 'obs-reads');
SELECT apiary_result('obs-reads', '60 s');
SELECT apiary_invoke('obs_read', '{"id": 3}');
-- a row read twice by one call is recorded once; the count is capped
SET apiary.provenance_max_reads = 3;
SELECT apiary_invoke('obs_count');
RESET apiary.provenance_max_reads;
-- an index-only scan gives the index's columns, named as in the table
VACUUM obs_shelf;
CREATE FUNCTION obs_low_ids() RETURNS bigint LANGUAGE sql
SET apiary.kind = 'readonly' SET enable_seqscan = off SET enable_bitmapscan = off
AS $$ SELECT count(*) FROM obs_shelf WHERE id < 3 $$;
SELECT apiary_invoke('obs_low_ids');
-- reads outside apiary are not recorded
SELECT count(*) FROM obs_shelf;
SELECT wait_until($c$(SELECT count(*) FROM apiary.provenance WHERE relname = 'public.obs_shelf') >= 7$c$);
SELECT workflow, function, relation, operation, "row"
FROM apiary.provenance WHERE relname = 'public.obs_shelf'
ORDER BY workflow NULLS LAST, function, "row"::text;
-- a SECURITY DEFINER function may touch rows its caller may not read:
-- the caller's provenance records the write and the read, not the rows
CREATE TABLE obs_secret (id int PRIMARY KEY, pin text);
INSERT INTO obs_secret VALUES (1, '1234');
CREATE FUNCTION obs_rotate(id int) RETURNS int LANGUAGE sql SECURITY DEFINER
SET apiary.kind = 'transactional' AS $$
  UPDATE obs_secret SET pin = '9999' WHERE obs_secret.id = obs_rotate.id RETURNING 1
$$;
CREATE ROLE obs_clerk;
SET ROLE obs_clerk;
SELECT apiary_invoke('obs_rotate', '{"id": 1}');
RESET ROLE;
SELECT wait_until($c$(SELECT count(*) FROM apiary.provenance WHERE relname = 'public.obs_secret') >= 2$c$);
SET ROLE obs_clerk;
SELECT function, relname, operation, "row" FROM apiary.provenance
WHERE relname = 'public.obs_secret' ORDER BY operation;
-- any role may ask whether provenance is recording
SELECT setting, state FROM apiary.provenance_status;
RESET ROLE;
DROP FUNCTION obs_rotate(int);
DROP TABLE obs_secret;
DROP ROLE obs_clerk;
-- a column of a type of the database's own is recorded as its text: a cast
-- to json that the type's owner made never runs, neither in the collector
-- (a superuser) nor in the session of whoever read the row
CREATE TYPE obs_mood AS ENUM ('calm', 'cross');
CREATE DOMAIN obs_level AS int CHECK (VALUE > 0);
CREATE FUNCTION obs_mood_json(obs_mood) RETURNS json LANGUAGE sql
AS $$ SELECT to_json('cast run by ' || current_user) $$;
CREATE CAST (obs_mood AS json) WITH FUNCTION obs_mood_json(obs_mood);
-- and json, which jsonb may refuse (a \u0000, a number past numeric's
-- range): embedded, it stopped the collector for good, and failed every
-- apiary function that read the row
CREATE TABLE obs_moods (id int PRIMARY KEY, mood obs_mood, moods obs_mood[], level obs_level,
                        note json);
CREATE FUNCTION obs_feel(id int, mood obs_mood) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional'
AS $$ INSERT INTO obs_moods VALUES (id, mood, ARRAY[mood, 'calm'], 3,
                                    '{"a": "\u0000", "n": 1e1000000}') RETURNING 1 $$;
CREATE FUNCTION obs_moods_felt() RETURNS bigint LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT count(*) FROM obs_moods $$;
SELECT apiary_invoke('obs_feel', '{"id": 1, "mood": "cross"}');
SELECT apiary_invoke('obs_moods_felt');
SELECT wait_until($c$(SELECT count(*) FROM apiary.provenance WHERE relname = 'public.obs_moods') >= 2$c$);
SELECT function, operation, "row" FROM apiary.provenance
WHERE relname = 'public.obs_moods' ORDER BY operation;
DROP TABLE obs_moods;
DROP TYPE obs_mood CASCADE;
DROP DOMAIN obs_level;
-- row images are bounded, so that no row stops the collector (a 300 MB
-- value did, at every restart, as jsonb takes at most 256 MB): a value over
-- 1 MB is left out (null), a row whose values add up to more than 8 MB has
-- no image; the rows are recorded, and so are the writes after them
CREATE TABLE obs_big (id int PRIMARY KEY, a text, b text, c text, d text, e text,
                      f text, g text, h text, i text);
CREATE FUNCTION obs_big_put(id int, each_mb numeric, columns int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  INSERT INTO obs_big SELECT id, v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9]
  FROM (SELECT array_agg(CASE WHEN g <= columns THEN repeat(chr(96 + g), (each_mb * 1048576)::int) END) v
        FROM generate_series(1, 9) g) x
  RETURNING 1 $$;
SELECT apiary_invoke('obs_big_put', '[1, 1.01, 1]');
SELECT apiary_invoke('obs_big_put', '[2, 0.95, 9]');
SELECT apiary_invoke('obs_big_put', '[3, 0.5, 2]');
SELECT wait_until($c$(SELECT count(*) FROM apiary.provenance WHERE relname = 'public.obs_big') >= 3$c$);
SELECT "row"->'id' AS id, "row" IS NULL AS no_image,
       (SELECT string_agg(k || ':' || coalesce(length(v)::text, 'null'), ' ' ORDER BY k)
          FROM jsonb_each_text("row") AS e(k, v) WHERE k <> 'id') AS lengths
FROM apiary.provenance WHERE relname = 'public.obs_big' ORDER BY task, xid;
DROP TABLE obs_big;

-- off again: the slot goes, and holds no WAL back
ALTER SYSTEM RESET apiary.provenance;
SELECT pg_reload_conf();
SELECT wait_until($c$NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = 'apiary_provenance')$c$);
SELECT setting, slot, state FROM apiary.provenance_status;
