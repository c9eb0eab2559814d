#!/usr/bin/env bash
# Futures a task did not queue itself, under load: 450 workflows whose root
# queues two slow tasks and two consumers, each handed both futures inside
# a value.  A consumer queues a task on each (a wait on a future another
# transaction queued, which may finish while the consumer runs) and
# returns one of those, or one of the foreign futures itself (a link,
# checked for cycles under the workflow's link lock).  Meanwhile a session
# cancels and resumes random workflows.  Then every workflow cancelled or
# failed is resumed until all are done.  At the end: all done, every task
# done, every step's effect counted exactly once, no deadlock and no crash
# in the log.
set -euo pipefail
. "$(dirname "$0")/../../script/lib.sh"

throwaway_server "${PORT:-55486}" "apiary.workers = 4"
fail() { echo "FAIL: $*"; tail -n 20 "$dir/server.log"; exit 1; }

psql_ >/dev/null <<'SQL'
CREATE EXTENSION apiary;
CREATE TABLE hits (workflow text, function text);
CREATE FUNCTION hit(f text) RETURNS void LANGUAGE sql AS $$
  INSERT INTO hits VALUES (split_part(apiary_task_key(), '/', 1), f)
$$;
CREATE FUNCTION sq(x int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT hit('sq'); SELECT x * x $$;
CREATE FUNCTION slow_value(x int) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM pg_sleep(random() * 0.05);
  PERFORM hit('slow_value');
  RETURN x;
END $$;
CREATE FUNCTION consume(deps jsonb) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
DECLARE
  f jsonb := apiary_queue('sq', jsonb_build_array(deps->0));
BEGIN
  PERFORM apiary_queue('sq', jsonb_build_array(deps->1));
  PERFORM pg_sleep(random() * 0.05);
  PERFORM hit('consume');
  IF random() < 0.5 THEN
    RETURN f;
  END IF;
  RETURN deps->1;
END $$;
CREATE FUNCTION root() RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
DECLARE
  a jsonb := apiary_queue('slow_value', '[3]');
  b jsonb := apiary_queue('slow_value', '[4]');
BEGIN
  PERFORM apiary_queue('consume', jsonb_build_object('deps', jsonb_build_array(a, b)));
  RETURN apiary_queue('consume', jsonb_build_object('deps', jsonb_build_array(b, a)));
END $$;
SQL

for c in 1 2 3; do
	for i in $(seq 1 150); do echo "SELECT apiary_start('root', '{}', 'w$c-$i');"; done |
		psql_ >/dev/null &
done
for _ in $(seq 1 60); do
	w="w$((RANDOM % 3 + 1))-$((RANDOM % 150 + 1))"
	psql_ -c "SELECT apiary_cancel('$w')" >/dev/null 2>&1 || true   # not started yet
	sleep 0.05
	psql_ -c "SELECT apiary_resume('$w')" >/dev/null 2>&1 || true
done
wait
for _ in $(seq 1 600); do
	[ "$(psql_ -c "SELECT count(*) FROM apiary.workflows WHERE state <> 'done'")" -eq 0 ] && break
	psql_ -c "SELECT apiary_resume(id) FROM apiary.workflows WHERE state IN ('cancelled', 'failed')" >/dev/null
	sleep 0.2
done

started=$(psql_ -c "SELECT count(*) FROM apiary.workflows")
[ "$started" -eq 450 ] || fail "$started workflows started, not 450"
left=$(psql_ -c "SELECT string_agg(state || ' ' || n, ', ') FROM (SELECT state, count(*) n FROM apiary.workflows WHERE state <> 'done' GROUP BY 1) x")
[ -z "$left" ] || fail "workflows not done: $left"
tasks=$(psql_ -c "SELECT string_agg(state || ' ' || n, ', ') FROM (SELECT state, count(*) n FROM apiary.tasks WHERE state <> 'done' GROUP BY 1) x")
[ -z "$tasks" ] || fail "tasks not done: $tasks"
wrong=$(psql_ -c "SELECT count(*) FROM
	(SELECT workflow, function, count(*) n FROM apiary.tasks WHERE function <> 'root' GROUP BY 1, 2) t
	FULL JOIN (SELECT workflow, function, count(*) n FROM hits GROUP BY 1, 2) h USING (workflow, function)
	WHERE t.n IS DISTINCT FROM h.n")
[ "$wrong" -eq 0 ] || fail "$wrong (workflow, function) pairs whose effects do not count each task once"
! grep -E "deadlock detected|terminated by signal" "$dir/server.log" || fail "a deadlock or a crash"
echo "ok: 450 workflows passing futures between sibling tasks, cancelled and resumed at random: all done, every step once"
