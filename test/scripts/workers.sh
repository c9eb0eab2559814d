#!/usr/bin/env bash
# The launcher: waits for CREATE EXTENSION, keeps apiary.workers executors
# running (restarting one that exits, and replacing one that outgrows
# apiary.executor_max_memory), follows apiary.workers on reload
# (an executor no longer wanted finishes its task first), stands the
# executors down for DROP EXTENSION (telling apiary_result's waiters), and
# lets the server stop promptly.
set -euo pipefail
. "$(dirname "$0")/../../script/lib.sh"

# no room to spare beyond the two launchers (apiary's, logical
# replication's) and three executors: an executor
# started for a slot already held shows as a warning that there is none
throwaway_server "${PORT:-55474}" "apiary.workers = 2" "max_worker_processes = 5"
fail() { echo "FAIL: $*"; tail -n 20 "$dir/server.log"; exit 1; }
executors() { psql_ -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apiary executor'"; }
# wait_for N: until N executors run (bounded), else fail
wait_for() {
	for _ in $(seq 1 100); do
		[ "$(executors)" -eq "$1" ] && return 0
		sleep 0.1
	done
	fail "expected $1 executors, found $(executors)"
}

launchers=$(psql_ -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apiary launcher'")
[ "$launchers" -eq 1 ] || fail "expected one launcher, found $launchers"
sleep 1.5   # the launcher looks once a second: give it a look before the extension exists
[ "$(executors)" -eq 0 ] || fail "executors started before CREATE EXTENSION"

psql_ -c "CREATE EXTENSION apiary"
wait_for 2

# an executor that exits is started again
pid=$(psql_ -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'apiary executor' LIMIT 1")
kill -TERM "$pid"
for _ in $(seq 1 100); do
	[ "$(psql_ -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apiary executor' AND pid <> $pid")" -eq 2 ] && break
	sleep 0.1
done
[ "$(executors)" -eq 2 ] || fail "the executor that exited was not replaced"

# a launcher that exits (terminated here; or after an error) is started
# again by the postmaster, and the new one leaves the executors it finds
# running be: it started others for their slots, which exited at once,
# woke it, and were started again, thousands of times a second
pids() { psql_ -c "SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE backend_type = 'apiary executor'"; }
launcher() { psql_ -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'apiary launcher'"; }
before=$(pids)
old=$(launcher)
lines=$(wc -l <"$dir/server.log")
psql_ -c "SELECT pg_terminate_backend($old)" >/dev/null
for _ in $(seq 1 300); do
	new=$(launcher)
	[ -n "$new" ] && [ "$new" != "$old" ] && break
	sleep 0.1
done
[ -n "$new" ] && [ "$new" != "$old" ] || fail "the launcher was not started again"
sleep 2     # a few of the new launcher's passes
[ "$(pids)" = "$before" ] || fail "the new launcher replaced running executors ($before, then $(pids))"
! tail -n +"$((lines + 1))" "$dir/server.log" | grep "could not start apiary executor" ||
	fail "the new launcher started executors for slots already held"

# a cancel of the idle executors and of the launcher cancels nothing:
# none of them exits (each would log an error and be started again)
psql_ -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE backend_type IN ('apiary executor', 'apiary launcher')" >/dev/null
sleep 1.5   # a pass of the launcher, and the executors' loops
[ "$(pids)" = "$before" ] || fail "a cancel ended idle executors ($before, then $(pids))"
[ "$(launcher)" = "$new" ] || fail "a cancel ended the launcher"

# with default_transaction_read_only on, the launcher's housekeeping still
# writes: a workflow past its deadline is cancelled
psql_ -c "CREATE FUNCTION held() RETURNS int LANGUAGE sql SET apiary.kind = 'transactional' AS \$\$ SELECT 1 FROM pg_advisory_xact_lock(77) \$\$" >/dev/null
psql_ -c "ALTER SYSTEM SET default_transaction_read_only = on" -c "SELECT pg_reload_conf()" >/dev/null
# (a session holds the lock the task waits for, so it cannot finish in time)
as_pg "$PG_BIN/psql" -h "$dir" -p "$port" -U postgres -X -d postgres -qAt >/dev/null 2>&1 <<'SQL' &
SET application_name = 'holder';
SET default_transaction_read_only = off;
SELECT pg_advisory_lock(77);
SELECT apiary_start('held', '{}', 'held', timeout => '1 s');
SELECT pg_sleep(60);
SQL
holder=$!
for _ in $(seq 1 300); do
	[ "$(psql_ -c "SELECT state FROM apiary.workflows WHERE id = 'held'")" = cancelled ] && break
	sleep 0.1
done
state=$(psql_ -c "SELECT state FROM apiary.workflows WHERE id = 'held'")
psql_ -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'holder'" >/dev/null
wait "$holder" || true
psql_ -c "ALTER SYSTEM RESET default_transaction_read_only" -c "SELECT pg_reload_conf()" >/dev/null
[ "$state" = cancelled ] || fail "under default_transaction_read_only the workflow past its deadline is $state"

# apiary.workers follows a reload, up and down
psql_ -c "ALTER SYSTEM SET apiary.workers = 3" -c "SELECT pg_reload_conf()" >/dev/null
wait_for 3
psql_ -c "ALTER SYSTEM SET apiary.workers = 0" -c "SELECT pg_reload_conf()" >/dev/null
wait_for 0
psql_ -c "ALTER SYSTEM SET apiary.workers = 1" -c "SELECT pg_reload_conf()" >/dev/null
wait_for 1

# and work still flows
psql_ -c "CREATE FUNCTION one() RETURNS int LANGUAGE sql SET apiary.kind = 'readonly' AS \$\$ SELECT 1 \$\$" >/dev/null
out=$(psql_ -c "SELECT apiary_start('one', '{}', 'w')" -c "SELECT apiary_result('w', '30 s')" | tail -n 1)
[ "$out" = 1 ] || fail "workflow returned '$out'"

# idle executors sleep while another runs a long task: count the scans of
# apiary.tasks meanwhile (a polling loop would make thousands)
psql_ -c "ALTER SYSTEM SET apiary.workers = 3" -c "SELECT pg_reload_conf()" >/dev/null
wait_for 3
psql_ -c "CREATE FUNCTION nap() RETURNS int LANGUAGE sql SET apiary.kind = 'readonly' AS \$\$ SELECT 1 FROM pg_sleep(2) \$\$" >/dev/null
scans() { psql_ -c "SELECT pg_stat_force_next_flush()" -c "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_all_tables WHERE relid = 'apiary.tasks'::regclass" | tail -n 1; }
before=$(scans)
out=$(psql_ -c "SELECT apiary_start('nap', '{}', 'nap')" -c "SELECT apiary_result('nap', '30 s')" | tail -n 1)
[ "$out" = 1 ] || fail "nap returned '$out'"
sleep 0.5   # executors report their statistics when idle
after=$(scans)
[ $((after - before)) -lt 300 ] || fail "executors scanned apiary.tasks $((after - before)) times during one 2 s task"

# lowering apiary.workers lets a running task finish: its executor exits
# after it (with none left, a task cut short would never run again)
lines=$(wc -l <"$dir/server.log")
psql_ -c "CREATE FUNCTION long_nap() RETURNS int LANGUAGE sql SET apiary.kind = 'readonly' AS \$\$ SELECT 1 FROM pg_sleep(6) \$\$" >/dev/null
psql_ -c "SELECT apiary_start('long_nap', '{}', 'nap-through-scale-down')" >/dev/null
napping() { psql_ -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apiary executor' AND wait_event = 'PgSleep'"; }
for _ in $(seq 1 100); do
	[ "$(napping)" -eq 1 ] && break
	sleep 0.05
done
[ "$(napping)" -eq 1 ] || fail "long_nap did not start"
psql_ -c "ALTER SYSTEM SET apiary.workers = 0" -c "SELECT pg_reload_conf()" >/dev/null
# the idle ones go at once; the one napping stays until its task is done
wait_for 1
[ "$(napping)" -eq 1 ] || fail "the executor running long_nap did not wait for it"
out=$(psql_ -c "SELECT apiary_result('nap-through-scale-down', '30 s')")
[ "$out" = 1 ] || fail "nap through the scale-down returned '$out'"
attempts=$(psql_ -c "SELECT attempts FROM apiary.tasks WHERE workflow = 'nap-through-scale-down'")
[ "$attempts" -eq 1 ] || fail "nap ran $attempts times: its executor was stopped in the middle"
wait_for 0
if tail -n +"$((lines + 1))" "$dir/server.log" | grep -q "terminating background worker"; then
	fail "an executor was terminated by the scale-down"
fi
psql_ -c "ALTER SYSTEM SET apiary.workers = 2" -c "SELECT pg_reload_conf()" >/dev/null
wait_for 2

# dropping the extension stops the executors, also in the middle of
# workflows whose tasks hold locks on apiary's tables (a drop racing them
# deadlocked); creating it again brings them back
psql_ >/dev/null <<'SQL'
CREATE FUNCTION slow_chain(n int) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM pg_sleep(0.3);
  IF n > 0 THEN
    RETURN apiary_queue('slow_chain', to_jsonb(n - 1));
  END IF;
  RETURN to_jsonb(n);
END $$;
SELECT apiary_start('slow_chain', '20') FROM generate_series(1, 30);
SQL
sleep 1
lines=$(wc -l <"$dir/server.log")
# a drop that is not the owner's fails, and stops nothing: the same
# executors run after it
before=$(pids)
psql_ -c "CREATE ROLE not_owner" >/dev/null
if psql_ -c "SET ROLE not_owner" -c "DROP EXTENSION apiary" 2>/dev/null; then
	fail "a role that does not own apiary dropped it"
fi
sleep 1
[ "$(pids)" = "$before" ] || fail "a failed drop by another role stopped the executors ($before, then $(pids))"
# a session waiting for a workflow's result, with no timeout, is told of
# the drop rather than holding it up for good
wf=$(psql_ -c "SELECT id FROM apiary.workflows WHERE state = 'running' LIMIT 1")
psql_ -c "SELECT apiary_result('$wf')" >"$dir/waiter.out" 2>&1 &
waiter=$!
wait_sql "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE wait_event = 'Extension' AND query LIKE '%apiary_result%')" ||
	fail "no session waits in apiary_result"
PGOPTIONS="-c statement_timeout=60s" psql_ -c "DROP EXTENSION apiary" ||
	fail "DROP EXTENSION failed while workflows ran"
wait "$waiter" && fail "apiary_result returned while the extension was dropped"
grep -q "extension apiary is being dropped" "$dir/waiter.out" ||
	fail "apiary_result's waiter was not told of the drop: $(cat "$dir/waiter.out")"
wait_for 0
if tail -n +"$((lines + 1))" "$dir/server.log" | grep -E "deadlock detected|could not open relation"; then
	fail "the drop and the executors got in each other's way"
fi
psql_ -c "CREATE EXTENSION apiary"
wait_for 2
# a drop made in a savepoint that was released stands the executors down
# until its transaction ends, whatever savepoint rolls back after it (as
# psql's ON_ERROR_ROLLBACK does after each failed statement)
lines=$(wc -l <"$dir/server.log")
psql_ -v ON_ERROR_STOP=0 >/dev/null 2>&1 <<'SQL' &
BEGIN;
SAVEPOINT a;
DROP EXTENSION apiary;
RELEASE a;
SAVEPOINT b;
SELECT 1 / 0;
ROLLBACK TO b;
SELECT pg_sleep(4);
ROLLBACK;
SQL
dropper=$!
wait_for 0
wait_sql "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(4)%')" 100 ||
	fail "the dropping session did not get to its pg_sleep"
# a count of executors proves something only if the drop was still open
# after it was taken (psql is slow to start on a loaded machine)
checks=0
for _ in $(seq 1 20); do
	n=$(executors)
	[ "$(psql_ -c "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(4)%'")" -eq 1 ] || break
	[ "$n" -eq 0 ] || fail "executors started while a released drop of apiary was open"
	checks=$((checks + 1))
	sleep 0.1
done
[ "$checks" -gt 0 ] || fail "no count of executors was taken while the drop was open"
wait "$dropper" || true
wait_for 2
if tail -n +"$((lines + 1))" "$dir/server.log" | grep -E "lock timeout|could not open relation"; then
	fail "the workers got in the way of the open drop"
fi
# a task that ended its executor, its count left to the slot's next
# executor (none came: apiary.workers was lowered), is not charged to the
# task that has its id after the extension was dropped and created again
# (one executor, in the first slot, before and after)
psql_ -c "ALTER SYSTEM SET apiary.workers = 0" -c "SELECT pg_reload_conf()" >/dev/null
wait_for 0
psql_ -c "ALTER SYSTEM SET apiary.workers = 1" -c "SELECT pg_reload_conf()" >/dev/null
wait_for 1
psql_ >/dev/null <<'SQL'
CREATE FUNCTION quits() RETURNS int LANGUAGE plpgsql SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(78);
  PERFORM pg_terminate_backend(pg_backend_pid());
  RETURN 1;
END $$;
SQL
as_pg "$PG_BIN/psql" -h "$dir" -p "$port" -U postgres -X -d postgres -qAt >/dev/null 2>&1 <<'SQL' &
SET application_name = 'gate';
SELECT pg_advisory_lock(78);
SELECT pg_sleep(60);
SQL
gate=$!
wait_sql "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND objid = 78 AND granted)" 100 ||
	fail "the gate's lock was not taken"
psql_ -c "SELECT apiary_start('quits', '{}', 'quits')" >/dev/null
wait_sql "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND objid = 78 AND NOT granted)" 100 ||
	fail "quits did not start"
quits=$(psql_ -c "SELECT id FROM apiary.tasks WHERE workflow = 'quits'")
psql_ -c "ALTER SYSTEM SET apiary.workers = 0" -c "SELECT pg_reload_conf()" >/dev/null
psql_ -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'gate'" >/dev/null
wait "$gate" || true
wait_for 0
after=$(psql_ <<SQL
DROP EXTENSION apiary;
CREATE EXTENSION apiary;
ALTER FUNCTION one() SET apiary.kind = 'readonly';
SELECT setval(pg_get_serial_sequence('apiary.tasks', 'id'), $quits, false);
SELECT apiary_start('one', '{}', 'after-create');
SELECT id FROM apiary.tasks WHERE workflow = 'after-create';
SQL
)
[ "$(echo "$after" | tail -n 1)" = "$quits" ] || fail "the new workflow's task is not task $quits: $after"
lines=$(wc -l <"$dir/server.log")
psql_ -c "ALTER SYSTEM SET apiary.workers = 1" -c "SELECT pg_reload_conf()" >/dev/null
wait_for 1
out=$(psql_ -c "SELECT apiary_result('after-create', '30 s')")
[ "$out" = 1 ] || fail "the workflow after the new CREATE EXTENSION returned '$out'"
crashes=$(psql_ -c "SELECT crashes FROM apiary.tasks WHERE id = $quits")
[ "$crashes" -eq 0 ] || fail "task $quits of the new extension was charged the old task $quits's exit ($crashes crashes)"
! tail -n +"$((lines + 1))" "$dir/server.log" | grep "ended its executor" ||
	fail "a crash was counted after the extension was created again"
psql_ -c "ALTER SYSTEM SET apiary.workers = 2" -c "SELECT pg_reload_conf()" >/dev/null
wait_for 2

# an executor that outgrows apiary.executor_max_memory makes way, between
# tasks, for a fresh one: tasks queued with a thousand time zones (each
# cached for good by PostgreSQL, in each executor that runs one) all run,
# each once
psql_ -c "CREATE TABLE zone_runs (zone text)" \
	-c "CREATE FUNCTION zone_run() RETURNS void LANGUAGE sql SET apiary.kind = 'transactional' AS \$\$ INSERT INTO zone_runs VALUES (current_setting('TimeZone')) \$\$" >/dev/null
lines=$(wc -l <"$dir/server.log")
psql_ -c "ALTER SYSTEM SET apiary.executor_max_memory = '8MB'" -c "SELECT pg_reload_conf()" >/dev/null
psql_ -c "DO \$\$ BEGIN FOR i IN 1..1000 LOOP
	-- hours: i seconds east (a quarter second over, as PostgreSQL truncates)
	PERFORM set_config('TimeZone', ((i + 0.25) / 3600.0)::text, true);
	PERFORM apiary_start('zone_run', '{}');
END LOOP; END \$\$" >/dev/null
for _ in $(seq 1 600); do
	[ "$(psql_ -c "SELECT count(*) FROM zone_runs")" -ge 1000 ] && break
	sleep 0.1
done
runs=$(psql_ -c "SELECT count(*) || ' ' || count(DISTINCT zone) FROM zone_runs")
[ "$runs" = "1000 1000" ] || fail "tasks of a thousand time zones ran as '$runs' (runs, distinct zones)"
tail -n +"$((lines + 1))" "$dir/server.log" | grep -q "makes way for a fresh one" ||
	fail "no executor made way at apiary.executor_max_memory"
psql_ -c "ALTER SYSTEM RESET apiary.executor_max_memory" -c "SELECT pg_reload_conf()" >/dev/null
wait_for 2

psql_ -c "DROP EXTENSION apiary"
wait_for 0

# a fast shutdown is not held up by the workers
as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 20 stop >/dev/null ||
	fail "fast shutdown took longer than 20 s"
echo "ok: launcher waits for the extension, restarts executors, follows apiary.workers, stops promptly"
