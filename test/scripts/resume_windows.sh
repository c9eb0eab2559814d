#!/usr/bin/env bash
# apiary_resume of a task cancelled while it ran, in the windows where the
# task's old ready row is still there and not the task's own; with one
# executor, so that the interleavings are the ones forced here.
#
# 1. A task X, cancelled while it runs, loses its executor (terminated):
#    its ready row comes back, and the next executor takes it away as
#    stray in the same transaction in which it claims and runs a long task
#    Y.  X is resumed while that executor still runs Y: the row it will
#    delete must not count as X's.
# 2. A task X sees the cancel at its end, rolls back and records itself
#    cancelled, and its commit waits (for a synchronous standby that is
#    not there).  A resume must wait for that commit, not slip in between
#    the rollback and the commit.
# 3. A task X, cancelled and resumed while it runs, fails its attempt and
#    is put off for a retry: the ready row the resume added, left from
#    before, must not run it before its time.
#
# Each time (in 1 and 2) the workflow must finish after all, its task's
# effect once.
set -euo pipefail
. "$(dirname "$0")/../../script/lib.sh"

throwaway_server "${PORT:-55488}" "apiary.workers = 1"
holders=()
trap 'for p in "${holders[@]}"; do kill "$p" 2>/dev/null || true; done; pg_stop "$dir"; rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; tail -n 20 "$dir/server.log"; exit 1; }
# the client sessions commit without waiting for a standby
export PGOPTIONS="-c synchronous_commit=local"

psql_ >/dev/null <<'SQL'
CREATE EXTENSION apiary;
CREATE TABLE effects (what text);
CREATE FUNCTION gate(what text, gate int) RETURNS text LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  INSERT INTO effects VALUES (what);
  SELECT what FROM pg_advisory_xact_lock(gate)
$$;
CREATE FUNCTION gate_then_conflict(gate int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(gate);
  RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure';
END $$;
SELECT apiary_register('gate_then_conflict(int)', 'transactional', max_attempts => 50);
SQL

# hold LOCK: a session holding advisory lock LOCK until release LOCK
hold() {
	PGAPPNAME="holder-$1" psql_ -c "SELECT pg_advisory_lock($1)" -c "SELECT pg_sleep(600)" \
		>/dev/null 2>&1 &
	holders+=($!)
	wait_sql "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND granted)" ||
		fail "lock $1 not taken"
}
release() {
	psql_ -c "SELECT pg_terminate_backend(pid, 60000) FROM pg_stat_activity
	          WHERE application_name = 'holder-$1'" >/dev/null
}
# blocked LOCK: the executor waits for advisory lock LOCK
blocked() {
	wait_sql "SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity a USING (pid)
	                  WHERE a.backend_type = 'apiary executor' AND l.locktype = 'advisory'
	                    AND l.objid = $1 AND NOT l.granted)" ||
		fail "no executor waits for lock $1"
}
# finished WF WHAT: WF's result is WHAT, and its task's effect is there once
finished() {
	local out n
	out=$(psql_ -c "SELECT apiary_result('$1', '60 s')" 2>&1) || fail "$1: $out"
	[ "$out" = "\"$2\"" ] || fail "$1 returned $out, not \"$2\""
	n=$(psql_ -c "SELECT count(*) FROM effects WHERE what = '$2'")
	[ "$n" -eq 1 ] || fail "$1: its task's effect is there $n times"
}

# 1. the stray row of a terminated executor, taken with a long task
hold 4343
hold 4344
psql_ -c "SELECT apiary_start('gate', '{\"what\": \"x1\", \"gate\": 4343}', 'stray')" >/dev/null
blocked 4343
psql_ -c "SELECT apiary_cancel('stray')" >/dev/null
psql_ -c "SELECT apiary_start('gate', '{\"what\": \"y1\", \"gate\": 4344}', 'long')" >/dev/null
psql_ -c "SELECT pg_terminate_backend(pid, 60000) FROM pg_stat_activity
          WHERE backend_type = 'apiary executor'" >/dev/null
# the next executor tidies X's row away and runs Y, in one transaction
blocked 4344
psql_ -c "SELECT apiary_resume('stray')" >/dev/null
release 4344
release 4343
finished long y1
finished stray x1

# 2. a resume while the cancelled task's commit waits
hold 4343
psql_ -c "SELECT apiary_start('gate', '{\"what\": \"x2\", \"gate\": 4343}', 'slow-commit')" >/dev/null
blocked 4343
psql_ -c "SELECT apiary_cancel('slow-commit')" >/dev/null
psql_ -c "ALTER SYSTEM SET synchronous_standby_names = 'nobody'" -c "SELECT pg_reload_conf()" >/dev/null
# commits wait for the standby once the reload has reached the checkpointer:
# a probe's commit shows when
PGOPTIONS="-c synchronous_commit=on" PGAPPNAME=probe psql_ -c "INSERT INTO effects VALUES ('probe')" \
	>/dev/null 2>&1 &
holders+=($!)
wait_sql "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = 'probe'
                         AND wait_event = 'SyncRep')" || fail "commits do not wait for the standby"
psql_ -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'probe'" >/dev/null
release 4343
wait_sql "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'apiary executor'
                  AND wait_event = 'SyncRep')" || fail "the executor's commit does not wait"
psql_ -c "SELECT apiary_resume('slow-commit')" >/dev/null &
resume=$!
# the resume waits for the executor's commit (on the workflow's lock)
wait_sql "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE query = 'SELECT apiary_resume(''slow-commit'')'
                  AND wait_event = 'advisory')" ||
	fail "apiary_resume did not wait for the cancelled task's commit"
psql_ -c "ALTER SYSTEM RESET synchronous_standby_names" -c "SELECT pg_reload_conf()" >/dev/null
wait "$resume" || fail "apiary_resume failed"
finished slow-commit x2

# 3. a retry put off, and the row a resume left: the task's 16th attempt
# fails on a conflict (40001), retried after 0.01 s * 2^15, over 80 s
hold 4343
psql_ >/dev/null <<'SQL'
BEGIN;
SELECT apiary_start('gate_then_conflict', '{"gate": 4343}', 'put-off');
UPDATE apiary.tasks SET attempts = 15 WHERE workflow = 'put-off';
COMMIT;
SQL
blocked 4343
psql_ -c "SELECT apiary_cancel('put-off')" -c "SELECT apiary_resume('put-off')" >/dev/null
release 4343
# the failed attempt is recorded, its retry put off; the row the resume
# left must not run the task meanwhile (it ran at once, within
# milliseconds; two seconds are given to it here)
wait_sql "SELECT attempts = 1 AND run_after > now() + interval '60 s'
          FROM apiary.tasks WHERE workflow = 'put-off'" ||
	fail "put-off: its failed attempt was not recorded"
if wait_sql "SELECT calls > 1 FROM apiary.stats WHERE function = 'gate_then_conflict'" 20; then
	fail "put-off ran again before its retry was due"
fi
wait_sql "SELECT count(*) = 1 FROM apiary.ready r JOIN apiary.tasks t ON t.id = r.task
          WHERE t.workflow = 'put-off'" || fail "put-off keeps a ready row besides its retry's"
psql_ -c "SELECT apiary_cancel('put-off')" >/dev/null

echo "ok: a resume after a stray row was taken with another task, and one while a cancelled task commits, each run the task once; a row left from before a resume runs no retry early"
