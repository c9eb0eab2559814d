#!/usr/bin/env bash
# apiary_result wakes up when its own workflow finishes, whoever finishes it.
#
# Waiters sleep on one of apiary's condition variables, chosen by the
# workflow; the transaction that finishes a workflow (an executor, or
# another session's apiary_cancel) wakes that one when it commits.  A
# waiter woken on the wrong variable would sleep until its timeout, 10
# minutes here, and then still return the result: so the test gives each
# waiter a minute to return after its workflow finishes (a liveness bound,
# not a measure of speed), and checks that the others still sleep.
#
# 1. Eight workflows of an external function that always fails (so they
#    stay running, between attempts), one waiting session each; the
#    workflows are cancelled one by one, each waiter returns the
#    cancellation as its error, the rest go on waiting.
# 2. Four workflows whose task is held by an advisory lock, one waiting
#    session each; the lock is released, the executors finish them, and
#    every waiter returns its workflow's output.
set -euo pipefail
. "$(dirname "$0")/../../script/lib.sh"

throwaway_server "${PORT:-55477}" "apiary.workers = 4"
waiters=()
declare -A waiter   # workflow id -> pid of the session waiting for it
trap 'for p in "${waiters[@]}"; do kill "$p" 2>/dev/null || true; done; pg_stop "$dir"; rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; tail -n 20 "$dir/server.log"; exit 1; }

psql_ >/dev/null <<'SQL'
CREATE EXTENSION apiary;
CREATE FUNCTION unreachable() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'service unavailable' USING ERRCODE = 'AP503';
END $$;
SELECT apiary_register('unreachable()', 'external', max_attempts => 100);
CREATE FUNCTION gated(n int) RETURNS text LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  SELECT 'opened ' || n FROM pg_advisory_xact_lock_shared(77)
$$;
SQL

# wait_in ID: a session waiting for workflow ID's result, in the background
wait_in() {
	psql_ -c "SELECT apiary_result('$1', '10 min')" >"$dir/$1.out" 2>&1 &
	waiters+=($!)
	waiter[$1]=$!
}
# sleeping N: until N client sessions sleep in apiary_result (bounded)
sleeping() {
	local n
	for _ in $(seq 1 600); do
		n=$(psql_ -c "SELECT count(*) FROM pg_stat_activity
		              WHERE query LIKE 'SELECT apiary_result(%' AND wait_event = 'Extension'")
		[ "$n" -eq "$1" ] && return 0
		sleep 0.1
	done
	fail "expected $1 sessions waiting in apiary_result, found $n"
}
# returned ID: the session waiting for workflow ID ends within a minute
returned() {
	for _ in $(seq 1 600); do
		kill -0 "${waiter[$1]}" 2>/dev/null || { wait "${waiter[$1]}" || true; return 0; }
		sleep 0.1
	done
	fail "the waiter for $1 was not woken when its workflow finished"
}

# 1. cancelled by another session
for i in $(seq 1 8); do
	psql_ -c "SELECT apiary_start('unreachable', '{}', 'down-$i')" >/dev/null
	wait_in "down-$i"
done
sleeping 8
for i in $(seq 1 8); do
	psql_ -c "SELECT apiary_cancel('down-$i')" >/dev/null
	returned "down-$i"
	grep -q 'cancel' "$dir/down-$i.out" ||
		fail "down-$i: apiary_result returned '$(cat "$dir/down-$i.out")', not the cancellation"
	sleeping $((8 - i))
done

# 2. finished by the executors
psql_ -c "SELECT pg_advisory_lock(77), pg_sleep(600)" >/dev/null 2>&1 &
waiters+=($!)
for _ in $(seq 1 600); do
	[ "$(psql_ -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 77 AND granted")" -eq 1 ] && break
	sleep 0.1
done
for i in $(seq 1 4); do
	psql_ -c "SELECT apiary_start('gated', '{\"n\": $i}', 'gated-$i')" >/dev/null
	wait_in "gated-$i"
done
sleeping 4
psql_ -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_advisory_lock(77)%'" >/dev/null
for i in $(seq 1 4); do
	returned "gated-$i"
	out=$(cat "$dir/gated-$i.out")
	[ "$out" = "\"opened $i\"" ] || fail "gated-$i: apiary_result returned '$out'"
done
echo "ok: 8 waiters woken by apiary_cancel one at a time, 4 by their workflows finishing"
