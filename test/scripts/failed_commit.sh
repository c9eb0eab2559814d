#!/usr/bin/env bash
# A task whose transaction fails outside its function, where the task's own
# subtransaction cannot catch it, still has that attempt counted: it is
# retried up to max_attempts, then it fails with the error.
#
# On a server whose default_transaction_isolation is SERIALIZABLE, task
# pivot() reads x, writes y, and then waits for an advisory lock the test
# holds.  Meanwhile one session reads y and stays open, another writes x and
# commits: that makes the task the pivot of a dangerous structure, and SSI
# dooms its whole transaction — the failure surfaces in apiary's own writes
# after the function, or at the commit, and rolls back everything,
# including the attempt's count.  The lock is released, and:
#   1. with max_attempts 3, the attempt is counted and the task retried:
#      it runs once more and is done after 2 attempts;
#   2. with max_attempts 1, the task fails with 40001, which apiary_result
#      raises.
set -euo pipefail
. "$(dirname "$0")/../../script/lib.sh"

throwaway_server "${PORT:-55479}" "apiary.workers = 2" \
	"default_transaction_isolation = 'serializable'"
sessions=()
trap 'exec 7>&- 8>&- 2>/dev/null; for p in "${sessions[@]}"; do kill "$p" 2>/dev/null || true; done; pg_stop "$dir"; rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; tail -n 20 "$dir/server.log"; exit 1; }
rc() { psql_ -F ' ' -c "SET default_transaction_isolation = 'read committed'" -c "$1"; }

psql_ >/dev/null <<'SQL'
CREATE EXTENSION apiary;
CREATE TABLE x (n int);
CREATE TABLE y (n int);
INSERT INTO x VALUES (0);
INSERT INTO y VALUES (0);
CREATE FUNCTION pivot() RETURNS int LANGUAGE plpgsql AS $$
DECLARE v int;
BEGIN
  SELECT n INTO v FROM x;
  UPDATE y SET n = n + 1;
  PERFORM pg_advisory_xact_lock(42);
  RETURN v;
END $$;
SELECT apiary_register('pivot()', max_attempts => 3);
CREATE FUNCTION pivot_once() RETURNS int LANGUAGE sql AS 'SELECT pivot()';
SELECT apiary_register('pivot_once()', max_attempts => 1);
SQL

# session: a psql fed line by line through a fifo, on file descriptor fd
session() { # name fd
	mkfifo "$dir/$1.in"
	pg_psql "$dir" "$port" -d postgres -qAt <"$dir/$1.in" >"$dir/$1.out" 2>&1 &
	sessions+=($!)
	eval "exec $2>\"$dir/$1.in\""
}
session hold 7
session reader 8

doom() { # function workflow: run it as the pivot of a dangerous structure
	echo "SELECT pg_advisory_lock(42);" >&7
	for _ in $(seq 1 100); do
		[ "$(psql_ -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()")" -eq 1 ] && break
		sleep 0.05
	done
	psql_ -c "SELECT apiary_start('$1', '{}', '$2')" >/dev/null
	# the task has read x and written y, and waits for the lock
	for _ in $(seq 1 200); do
		[ "$(psql_ -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")" -eq 1 ] && break
		sleep 0.05
	done
	[ "$(psql_ -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")" -eq 1 ] ||
		fail "task of $2 did not reach the lock"
	echo "BEGIN; SELECT 'read', n FROM y; SELECT 'reader open';" >&8
	for _ in $(seq 1 100); do
		grep -q 'reader open' "$dir/reader.out" && break
		sleep 0.05
	done
	psql_ -c "UPDATE x SET n = n + 1"
	echo "SELECT pg_advisory_unlock(42);" >&7
	# the task fails; the reader may end now
	for _ in $(seq 1 200); do
		[ "$(rc "SELECT count(*) FROM apiary.tasks WHERE workflow = '$2' AND (attempts > 0 OR state <> 'pending')")" -eq 1 ] && break
		sleep 0.05
	done
	echo "COMMIT;" >&8
	: >"$dir/reader.out"
}

# 1. counted, retried, done
doom pivot retried
out=$(rc "SELECT apiary_result('retried', '30 s')")
[ "$out" = 1 ] || fail "the retried task should have read x after the update, returned $out"
read -r state attempts <<<"$(rc "SELECT state, attempts FROM apiary.tasks WHERE workflow = 'retried'")"
[ "$state" = done ] && [ "$attempts" -eq 2 ] ||
	fail "the doomed task should be done after 2 attempts, found $state after $attempts"
grep -q 'apiary task [0-9]* (pivot) failed, retrying in .* (attempt 1 of 3): could not serialize access' "$dir/server.log" ||
	fail "no retry of the doomed attempt in the server log"

# 2. max_attempts 1: failed with 40001
doom pivot_once failed
err=$(rc "SELECT apiary_result('failed', '30 s')" 2>&1 || true)
case $err in
*"could not serialize access"*) ;;
*) fail "apiary_result should raise the serialization failure, said: $err" ;;
esac
read -r state attempts code <<<"$(rc "SELECT state, attempts, error->>'sqlstate' FROM apiary.tasks WHERE workflow = 'failed'")"
[ "$state" = failed ] && [ "$attempts" -eq 1 ] && [ "$code" = 40001 ] ||
	fail "the doomed task should have failed with 40001 after 1 attempt, found $state, $attempts, $code"
[ "$(rc "SELECT state FROM apiary.workflows WHERE id = 'failed'")" = failed ] ||
	fail "workflow 'failed' is not failed"

echo "ok: a transaction doomed outside the function counts its attempt: retried and done after 2, failed with 40001 at max_attempts 1"
