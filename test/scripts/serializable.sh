#!/usr/bin/env bash
# Workflows on a server whose default_transaction_isolation is SERIALIZABLE:
# tasks run SERIALIZABLE, the serialization failures that executors working
# side by side cause each other are retried, and every step still takes
# effect exactly once.
#
# 8 clients start 2,000 3-step chains (each step updates one of 1,000 counters
# and queues the next); a start that itself fails to serialize is the
# client's to retry, and is not counted.  Then: every workflow started is
# done, the counters add up to three steps per workflow, each step task
# is done, and a task reports its transaction as serializable.
set -euo pipefail
. "$(dirname "$0")/../../script/lib.sh"

# 8 clients' chains conflict often: a step may fail to serialize three times
# in a row, and fail (as it should at the default max_attempts); ten
# attempts let every one get through
throwaway_server "${PORT:-55478}" "apiary.workers = 4" "default_transaction_isolation = 'serializable'" \
	"apiary.max_attempts = 10"
fail() { echo "FAIL: $*"; tail -n 20 "$dir/server.log"; exit 1; }

psql_ >/dev/null <<'SQL'
CREATE EXTENSION apiary;
CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
INSERT INTO counters SELECT g, 0 FROM generate_series(1, 1000) g;
CREATE FUNCTION step(id int, k int) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  UPDATE counters SET n = n + 1 WHERE counters.id = step.id;
  IF k < 3 THEN
    RETURN apiary_queue('step', jsonb_build_object('id', id % 1000 + 1, 'k', k + 1));
  END IF;
  RETURN to_jsonb(current_setting('transaction_isolation'));
END $$;
SQL
printf '%s\n' '\set id random(1, 1000)' \
	"SELECT apiary_start('step', jsonb_build_object('id', :id::int, 'k', 1));" >"$dir/start.sql"
chmod 644 "$dir/start.sql"
"$PG_BIN/pgbench" -h "$dir" -p "$port" -U postgres -n -c 8 -j 2 -t 250 \
	--max-tries=10 -f "$dir/start.sql" postgres >"$dir/pgbench.log" 2>&1 ||
	fail "pgbench: $(tail -n 3 "$dir/pgbench.log")"

for _ in $(seq 1 600); do
	[ "$(psql_ -c "SELECT count(*) FROM apiary.workflows WHERE state = 'running'")" -eq 0 ] && break
	sleep 0.1
done
read -r started done <<<"$(psql_ -F ' ' -c "SELECT count(*), count(*) FILTER (WHERE state = 'done') FROM apiary.workflows")"
[ "$started" -ge 1900 ] || fail "only $started of 2000 workflows were started"
[ "$done" -eq "$started" ] || fail "$done of $started workflows done"
sum=$(psql_ -c "SELECT sum(n) FROM counters")
[ "$sum" -eq $((3 * started)) ] || fail "counters add up to $sum, not $((3 * started))"
tasks=$(psql_ -c "SELECT count(*) FROM apiary.tasks WHERE state = 'done'")
[ "$tasks" -eq $((3 * started)) ] || fail "$tasks step tasks done, not $((3 * started))"
iso=$(psql_ -c "SELECT DISTINCT output #>> '{}' FROM apiary.workflows")
[ "$iso" = serializable ] || fail "tasks ran as '$iso'"
failures=$(grep -c 'failed, retrying in .*could not serialize' "$dir/server.log" || true)
most=$(psql_ -c "SELECT max(attempts) FROM apiary.tasks")

# Steps that insert and queue: here the serialization failures strike in
# the middle of apiary_queue's own insert, inside the function.  That left
# the row in apiary's table slot, which freed it a second time at its next
# use, after the function's memory had gone with its subtransaction: an
# executor crashed, or a task failed with "unrecognized node type", within
# a few hundred of these workflows.
psql_ >/dev/null <<'SQL'
CREATE TABLE logged (workflow text, k int);
CREATE FUNCTION log_step(k int) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  INSERT INTO logged VALUES (split_part(apiary_task_key(), '/', 1), k);
  IF k < 3 THEN
    RETURN apiary_queue('log_step', jsonb_build_object('k', k + 1));
  END IF;
  RETURN to_jsonb(k);
END $$;
SQL
for c in a b; do
	{
		# the tasks run SERIALIZABLE; the starts need not
		echo "SET default_transaction_isolation = 'read committed';"
		for i in $(seq 1 600); do
			echo "SELECT apiary_start('log_step', '{\"k\": 1}', 'log-$c$i');"
		done
	} | psql_ >/dev/null 2>&1 &
done
wait
for _ in $(seq 1 600); do
	[ "$(psql_ -c "SELECT count(*) FROM apiary.workflows WHERE state = 'running'")" -eq 0 ] && break
	sleep 0.1
done
! grep -E "terminated by signal|unrecognized" "$dir/server.log" || fail "an executor crashed or corrupted its memory"
read -r logged ldone <<<"$(psql_ -F ' ' -c "SELECT count(*), count(*) FILTER (WHERE state = 'done') FROM apiary.workflows WHERE function = 'log_step'")"
[ "$logged" -ge 1000 ] || fail "only $logged of 1200 logging workflows were started"
[ "$ldone" -eq "$logged" ] || fail "$ldone of $logged logging workflows done"
rows=$(psql_ -c "SELECT count(*) FROM logged l JOIN apiary.workflows w ON w.id = l.workflow")
[ "$rows" -eq $((3 * logged)) ] || fail "$rows steps logged, not $((3 * logged))"
lfailures=$(( $(grep -c 'failed, retrying in .*could not serialize' "$dir/server.log" || true) - failures ))
echo "ok: $started workflows of 3 steps under SERIALIZABLE, each step once ($failures serialization failures retried; at most $most attempts for a task); $logged that insert and queue, each step once ($lfailures retried)"
