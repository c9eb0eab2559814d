#!/usr/bin/env bash
# A task whose C function crashes the server is given up after max_attempts
# crashes, instead of crash-looping, and every other workflow goes on.
# A task running beside it is not counted.  A task that ends its executor
# with a FATAL error is given up too; an operator's termination of an
# executor is not counted.  An immediate shutdown is not
# a crash: a task running through three of them (more than its
# max_attempts) is not counted, and completes.  With
# restart_after_crash off, each crash stops the server and a new
# postmaster is started (as an HA manager would): the crashes still count.
# Also runs the example C module built against the installed apiary.h.
set -euo pipefail
. "$(dirname "$0")/../../script/lib.sh"

make -s -C "$APIARY_ROOT/test/c_example" >/dev/null 2>&1
make -s -C "$APIARY_ROOT/test/c_example" install >/dev/null 2>&1

throwaway_server "${PORT:-55473}" "apiary.workers = 2" "max_prepared_transactions = 2"
fail() { echo "FAIL: $*"; tail -n ${LOGLINES:-30} "$dir/server.log"; exit 1; }

psql_ <<'SQL'
CREATE EXTENSION apiary;
CREATE FUNCTION square(x int) RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT x * x $$;
CREATE FUNCTION example_countdown(n int) RETURNS jsonb
AS 'apiary_example', 'example_countdown' LANGUAGE C STRICT;
CREATE FUNCTION example_crash() RETURNS int
AS 'apiary_example', 'example_crash' LANGUAGE C;
SELECT apiary_register('example_countdown(int)');
SELECT apiary_register('example_crash()', max_attempts => 2);
CREATE FUNCTION example_try(name text, args jsonb) RETURNS text
AS 'apiary_example', 'example_try' LANGUAGE C STRICT;
SELECT apiary_register('example_try(text, jsonb)');
CREATE TABLE side (v int);
CREATE FUNCTION write_then_fail(v int) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  INSERT INTO side VALUES (v);
  PERFORM apiary_queue('square', to_jsonb(v));
  RAISE EXCEPTION 'refusing %', v;
END $$;
CREATE FUNCTION slow_square(x int) RETURNS int LANGUAGE sql
AS $$ SELECT x * x FROM pg_sleep(8) $$;
SELECT apiary_register('slow_square(int)', max_attempts => 2);
SQL

# the C API: synchronous calls, queued tasks, futures, task keys
out=$(psql_ -c "SELECT apiary_start('example_countdown', '3', 'c-api')" \
	-c "SELECT apiary_result('c-api', '60 s')" | tail -n 1)
[[ "$out" == '"done in task c-api/'* ]] || fail "C API workflow returned $out"
steps=$(psql_ -c "SELECT count(*) FROM apiary_status('c-api') WHERE state = 'done'")
[ "$steps" -eq 4 ] || fail "expected 4 done steps, got $steps"

# a task's C function that catches the error of a call it makes goes on
# without the call's effects: its write and the task it queued are gone
out=$(psql_ -c "SELECT apiary_start('example_try', '{\"name\": \"write_then_fail\", \"args\": {\"v\": 5}}', 'c-try')" \
	-c "SELECT apiary_result('c-try', '60 s')" | tail -n 1)
[ "$out" = '"caught: refusing 5"' ] || fail "C API catch returned $out"
[ "$(psql_ -c "SELECT count(*) FROM side")" -eq 0 ] || fail "a failed call caught in C kept its write"
[ "$(psql_ -c "SELECT count(*) FROM apiary_status('c-try')")" -eq 1 ] || fail "a failed call caught in C kept the task it queued"
# also called straight from SQL, outside any task: the call made through
# the C API has a subtransaction of its own there too
out=$(psql_ -c "SELECT example_try('write_then_fail', '{\"v\": 6}')")
[[ "$out" == 'caught: '* ]] || fail "C API catch outside a task returned $out"
[ "$(psql_ -c "SELECT count(*) FROM side")" -eq 0 ] || fail "a failed call caught in C outside a task kept its write"

# the poison task: each run takes the server down; after 2 it is given up.
# A task running beside it is rolled back by each restart, through no
# fault of its own: it is not counted, and completes.
psql_ -c "SELECT apiary_start('slow_square', '4', 'beside')" >/dev/null
for _ in $(seq 1 200); do
	[ "$(psql_ -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'apiary executor%' AND wait_event = 'PgSleep'")" -eq 1 ] && break
	sleep 0.05
done
psql_ -c "SELECT apiary_start('example_crash', '{}', 'poison')" >/dev/null
state=
for _ in $(seq 1 240); do
	state=$(psql_ -c "SELECT state FROM apiary.workflows WHERE id = 'poison'" 2>/dev/null || true)
	[ "$state" = failed ] && break
	sleep 0.5
done
[ "$state" = failed ] || fail "poison workflow is '$state', not failed"
crashes=$(psql_ -c "SELECT crashes FROM apiary.tasks WHERE workflow = 'poison'")
[ "$crashes" -eq 2 ] || fail "expected 2 crashes counted, got $crashes"
err=$(psql_ -c "SELECT apiary_result('poison')" 2>&1 || true)
echo "$err" | grep -q "was running each of the 2 times the server went down" ||
	fail "apiary_result said: $err"
out=$(psql_ -c "SELECT apiary_result('beside', '60 s')" 2>&1 || true)
[ "$out" = 16 ] || fail "the task beside the poison one returned $out"
beside=$(psql_ -c "SELECT crashes FROM apiary.tasks WHERE workflow = 'beside'")
[ "$beside" -eq 0 ] || fail "the task beside the poison one had $beside crashes counted"
restarts=$(grep -c "terminated by signal 11" "$dir/server.log" || true)
[ "$restarts" -eq 2 ] || fail "expected 2 crashes in the log, found $restarts"

# everything else goes on (under a workflow id that JSON must escape)
out=$(psql_ -c "SELECT apiary_start('example_countdown', '2', 'after \"crashes\"')" \
	-c "SELECT apiary_result('after \"crashes\"', '60 s')" | tail -n 1)
[[ "$out" == '"done in task after \"crashes\"/'* ]] || fail "workflow after the crashes returned $out"

# A task that ends its executor with a FATAL error (a C function's, or a
# superuser's task terminating its own backend) is counted as a crash too,
# and given up after max_attempts with that error; an operator's
# pg_terminate_backend of an executor running a task is not counted.
psql_ >/dev/null <<'SQL'
CREATE FUNCTION example_fatal() RETURNS int
AS 'apiary_example', 'example_fatal' LANGUAGE C;
SELECT apiary_register('example_fatal()', max_attempts => 3);
CREATE FUNCTION end_own_backend() RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM pg_terminate_backend(pg_backend_pid());
  PERFORM pg_sleep(5);
  RETURN 1;
END $$;
CREATE FUNCTION nap_square(x int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT x * x FROM pg_sleep(2) $$;
SELECT apiary_register('nap_square(int)', max_attempts => 2);
SELECT apiary_start('example_fatal', '{}', 'fatal');
SELECT apiary_start('end_own_backend', '{}', 'self-terminated');
SQL
for wf in fatal self-terminated; do
	out=$(psql_ -c "SELECT apiary_result('$wf', '120 s')" 2>&1 || true)
	n=$(psql_ -c "SELECT crashes FROM apiary.tasks WHERE workflow = '$wf'")
	# (at least 3: another executor may have taken the task again before a
	# count reached 3, and that attempt's exit is counted too)
	[ "$n" -ge 3 ] || fail "workflow $wf: $n crashes counted, fewer than 3 ($out)"
	[ "$(psql_ -c "SELECT state FROM apiary.tasks WHERE workflow = '$wf'")" = failed ] ||
		fail "workflow $wf's task is not failed ($out)"
	case $wf in
	fatal) want="example_fatal gives up its backend" state=XX001 ;;
	*) want="due to administrator command" state=57P01 ;;
	esac
	echo "$out" | grep -q "$want" || fail "apiary_result('$wf') said: $out"
	[ "$(psql_ -c "SELECT error->>'sqlstate' FROM apiary.tasks WHERE workflow = '$wf'")" = $state ] ||
		fail "workflow $wf did not record SQLSTATE $state"
done
# each such attempt counts in apiary.stats, as a call that failed (and
# a retry, below max_attempts)
[ "$(psql_ -c "SELECT calls >= 3 AND errors = calls AND retries = 2 FROM apiary.stats WHERE function = 'example_fatal'")" = t ] ||
	fail "apiary.stats did not count example_fatal's attempts: $(psql_ -c "SELECT calls, errors, retries FROM apiary.stats WHERE function = 'example_fatal'")"
# napping_executor: the pid of the executor in pg_sleep, once there is one
# (at most 10 s), else nothing
napping_executor() {
	local pid=
	for _ in $(seq 1 200); do
		pid=$(psql_ -c "SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'apiary executor%' AND wait_event = 'PgSleep'")
		[ -n "$pid" ] && break
		sleep 0.05
	done
	echo "$pid"
}
psql_ -c "SELECT apiary_start('nap_square', '5', 'terminated')" >/dev/null
for i in 1 2 3; do
	pid=$(napping_executor)
	[ -n "$pid" ] || fail "nap_square is not running before termination $i"
	psql_ -c "SELECT pg_terminate_backend($pid, 10000)" >/dev/null
done
out=$(psql_ -c "SELECT apiary_result('terminated', '60 s')")
[ "$out" = 25 ] || fail "nap_square through 3 terminations returned $out"
[ "$(psql_ -c "SELECT crashes FROM apiary.tasks WHERE workflow = 'terminated'")" -eq 0 ] ||
	fail "an operator's terminations were counted as crashes"

# also when the FATAL error is not logged (it was noted by a log hook)
psql_ -c "ALTER SYSTEM SET log_min_messages = panic" -c "SELECT pg_reload_conf()" >/dev/null
psql_ -c "SELECT apiary_start('end_own_backend', '{}', 'unlogged')" >/dev/null
out=$(psql_ -c "SELECT apiary_result('unlogged', '120 s')" 2>&1 || true)
psql_ -c "ALTER SYSTEM RESET log_min_messages" -c "SELECT pg_reload_conf()" >/dev/null
[ "$(psql_ -c "SELECT state FROM apiary.tasks WHERE workflow = 'unlogged'")" = failed ] ||
	fail "a task ending its executor without a logged FATAL is not failed ($out)"
echo "$out" | grep -q "was not logged" || fail "apiary_result('unlogged') said: $out"

# immediate shutdowns while slow_square runs
psql_ -c "SELECT apiary_start('slow_square', '3', 'through-shutdowns')" >/dev/null
for i in 1 2 3; do
	running=0
	for _ in $(seq 1 200); do
		running=$(psql_ -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'apiary executor%' AND wait_event = 'PgSleep'" 2>/dev/null || echo 0)
		[ "$running" -eq 1 ] && break
		sleep 0.05
	done
	[ "$running" -eq 1 ] || fail "slow_square is not running before shutdown $i"
	as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
	as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
		fail "restart after shutdown $i failed"
done
out=$(psql_ -c "SELECT apiary_result('through-shutdowns', '60 s')")
[ "$out" = 9 ] || fail "slow_square through shutdowns returned $out"
counted=$(psql_ -c "SELECT crashes FROM apiary.tasks WHERE workflow = 'through-shutdowns'")
[ "$counted" -eq 0 ] || fail "immediate shutdowns counted $counted crashes"

# a cancel left prepared holds its workflow's lock: after a crash restart
# the launcher's count of the task it names waits a second at most, and
# every other workflow goes on (the launcher waited for good)
psql_ -c "CREATE FUNCTION held_nap() RETURNS int LANGUAGE sql SET apiary.kind = 'transactional' AS \$\$ SELECT 1 FROM pg_sleep(5) \$\$" \
	-c "SELECT apiary_start('held_nap', '{}', 'held')" >/dev/null
pid=$(napping_executor)
[ -n "$pid" ] || fail "held_nap is not running"
psql_ -c "BEGIN" -c "SELECT apiary_cancel('held')" -c "PREPARE TRANSACTION 'held-cancel'" >/dev/null
kill -9 "$pid"
for _ in $(seq 1 300); do
	psql_ -c "SELECT 1" >/dev/null 2>&1 && break
	sleep 0.1
done
out=$(psql_ -c "SELECT apiary_start('square', '6', 'after-held')" -c "SELECT apiary_result('after-held', '60 s')" | tail -n 1)
[ "$out" = 36 ] || fail "a workflow after a crash restart, beside a prepared cancel, returned $out"
psql_ -c "COMMIT PREPARED 'held-cancel'" >/dev/null

# restart_after_crash = off: the server goes down at each crash; start it
psql_ -c "ALTER SYSTEM SET restart_after_crash = off" -c "SELECT pg_reload_conf()" >/dev/null
psql_ -c "SELECT apiary_start('example_crash', '{}', 'poison-2')" >/dev/null
downs=0
for _ in 1 2 3 4; do
	state=
	for _ in $(seq 1 600); do
		if ! as_pg "$PG_BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
			state=down
			break
		fi
		state=$(psql_ -c "SELECT state FROM apiary.workflows WHERE id = 'poison-2'" 2>/dev/null || true)
		[ "$state" = failed ] && break
		sleep 0.1
	done
	[ "$state" = failed ] && break
	[ "$state" = down ] || fail "poison-2 is '$state': it neither failed nor took the server down"
	downs=$((downs + 1))
	# the task may take the new server down before pg_ctl sees it up
	as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null 2>&1 || true
done
[ "$state" = failed ] || fail "poison-2 is '$state' after $downs crashes"
crashes2=$(psql_ -c "SELECT crashes FROM apiary.tasks WHERE workflow = 'poison-2'")
[ "$crashes2" -eq 2 ] && [ "$downs" -eq 2 ] ||
	fail "with restart_after_crash off: $crashes2 crashes counted, the server went down $downs times"
echo "ok: poison task given up after $crashes crashes, none counted for the task beside it (and after $crashes2 with restart_after_crash off); tasks ending their executor with FATAL given up after at least 3 (also with the FATAL not logged); C API workflows ran; 3 terminations by an operator and 3 immediate shutdowns counted no crash; workflows ran after a crash restart beside a cancel left prepared"
