#!/usr/bin/env bash
# Failover: a primary and a streaming standby; the primary crashes in the
# middle of running workflows, the standby is promoted, and every workflow
# completes there, each step exactly once.
#
# 1. A primary runs a workload of $WORKFLOWS workflows: a root that queues two
#    steps and a join taking both steps' futures, returning the join's
#    future.  Every task sleeps a little and counts itself in table steps
#    (INSERT ... ON CONFLICT DO UPDATE SET n = n + 1) in its own transaction,
#    so a task that ran twice shows as n = 2.
# 2. A standby is made with pg_basebackup -R and streams from the primary.
#    Its apiary launcher must be running and must start no executor, also
#    while it has replayed pending tasks.
# 3. The workflows are started on the primary; once the standby has replayed
#    them and some have finished, the standby is cut off (TAIL=1, default)
#    while the primary commits a few more tasks, and the primary is killed
#    with SIGKILL (the postmaster, and with it its children: the whole server
#    dies at once, as when its machine does).  The standby is promoted.
# 4. On the promoted server the launcher must start the executors, and they
#    must finish every workflow with the right output, leave no task
#    pending, waiting or linked, and have run every step exactly once in the
#    promoted server's history.  Replication is asynchronous: a task that
#    committed on the primary but had not reached the standby is lost
#    together with its effects and runs again after promotion, which is
#    still exactly once in the history that survived; so the counts are
#    checked on the promoted server's own tables.  Afterwards the old
#    primary is restarted without executors to count that lost tail (and to
#    check that its own history has no step run twice either).
set -uo pipefail
. "$(dirname "$0")/../../script/lib.sh"

WORKFLOWS=${WORKFLOWS:-100}
WORKERS=4
# TAIL=1: cut the standby off shortly before the crash, so that the primary
# commits tasks the standby never gets and the promoted server must run them
# again.  TAIL=0: the standby streams until the crash (on loopback it then
# usually has everything).
TAIL=${TAIL:-1}
DEADLINE=90   # seconds for the promoted server to finish everything

# A free loopback port at or above $1 (not $2).
free_port() {
	local p=$1
	while [ "$p" = "${2:-}" ] || (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do
		p=$((p + 1))
	done
	echo "$p"
}
port1=$(free_port "${PORT:-55485}")
port2=$(free_port $((port1 + 1)) "$port1")

d1=$(pg_tmpdir)   # primary
d2=$(pg_tmpdir)   # standby
killed=()

cleanup() {
	pg_stop "$d2"
	pg_stop "$d1"
	# nothing of the killed primary may survive the test
	[ ${#killed[@]} -gt 0 ] && kill -KILL "${killed[@]}" 2>/dev/null
	rm -rf "$d1" "$d2"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

p1() { pg_psql "$d1" "$port1" -d postgres -qAt "$@"; }
p2() { pg_psql "$d2" "$port2" -d postgres -qAt "$@"; }

fail() {
	echo "FAIL: $*"
	local d
	for d in "$d1" "$d2"; do
		[ -f "$d/server.log" ] || continue
		echo "--- tail of $d/server.log ($([ "$d" = "$d1" ] && echo primary || echo standby))"
		tail -n 40 "$d/server.log"
	done
	exit 1
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# poll TIMEOUT_SECONDS COMMAND...: run COMMAND every 0.1 s until it succeeds
poll() {
	local until=$(($(now_ms) + $1 * 1000))
	shift
	until "$@"; do
		[ "$(now_ms)" -lt "$until" ] || return 1
		sleep 0.1
	done
}

# poll_eq TIMEOUT_SECONDS EXPECTED COMMAND...: until COMMAND prints EXPECTED
poll_eq() {
	local timeout=$1 expected=$2
	shift 2
	poll "$timeout" output_is "$expected" "$@"
}
output_is() {
	local expected=$1
	shift
	[ "$("$@" 2>/dev/null)" = "$expected" ]
}

count_bt() {   # count_bt psqlfn backend_type
	"$1" -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = '$2'"
}

t0=$(now_ms)

# --- 1. the primary and the workload ------------------------------------------
pg_start "$d1" "$port1" "wal_level = replica" "max_wal_senders = 5" \
	"hot_standby = on" "apiary.workers = $WORKERS" ||
	fail "primary did not start"

p1 >/dev/null <<'SQL' || fail "could not set up the workload"
CREATE EXTENSION apiary;
CREATE TABLE steps (
    workflow int,
    step     int,
    n        int NOT NULL DEFAULT 1,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workflow, step)
);
CREATE FUNCTION fo_count(w int, s int) RETURNS void LANGUAGE sql AS $$
  INSERT INTO steps (workflow, step) VALUES (w, s)
  ON CONFLICT (workflow, step) DO UPDATE SET n = steps.n + 1
$$;
-- step 1 and 2: output 10w + s
CREATE FUNCTION fo_step(w int, s int) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM pg_sleep(0.02 + random() * 0.03);
  PERFORM fo_count(w, s);
  RETURN w * 10 + s;
END $$;
-- step 3 waits for both: output 30w + 6
CREATE FUNCTION fo_join(w int, a int, b int) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM pg_sleep(0.02 + random() * 0.03);
  PERFORM fo_count(w, 3);
  RETURN a + b + w * 10 + 3;
END $$;
-- step 0, the root: its output is the join's
CREATE FUNCTION fo_root(w int) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  PERFORM pg_sleep(0.02 + random() * 0.03);
  PERFORM fo_count(w, 0);
  RETURN apiary_queue('fo_join', jsonb_build_object('w', w,
    'a', apiary_queue('fo_step', jsonb_build_object('w', w, 's', 1)),
    'b', apiary_queue('fo_step', jsonb_build_object('w', w, 's', 2))));
END $$;
CREATE FUNCTION fo_pause() RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS 'SELECT 7 FROM pg_sleep(1)';
CHECKPOINT;
SQL

grep -qE '^local +replication +all +trust' "$d1/data/pg_hba.conf" ||
	fail "the primary's pg_hba.conf does not let postgres replicate over the socket"

# --- 2. the standby -------------------------------------------------------------
as_pg "$PG_BIN/pg_basebackup" -h "$d1" -p "$port1" -U postgres \
	-D "$d2/data" -R -X stream -c fast >"$d2/basebackup.log" 2>&1 || {
	cat "$d2/basebackup.log"
	fail "pg_basebackup failed"
}
printf "port = %s\nunix_socket_directories = '%s'\n" "$port2" "$d2" |
	as_pg tee -a "$d2/data/postgresql.conf" >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$d2/data" -l "$d2/server.log" -w -t 60 start >/dev/null ||
	fail "standby did not start"
[ "$(p2 -c 'SELECT pg_is_in_recovery()')" = t ] || fail "the standby is not in recovery"
poll_eq 20 1 p2 -c "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'" ||
	fail "the standby is not streaming from the primary"

# --- 3. on the standby: a launcher, and no executor -----------------------------
poll_eq 20 1 count_bt p2 'apiary launcher' ||
	fail "no apiary launcher on the standby"
for _ in 1 2 3 4 5 6; do   # the launcher looks once a second: give it 3 s
	n=$(count_bt p2 'apiary executor')
	[ "$n" = 0 ] || fail "$n apiary executor(s) running on the standby"
	sleep 0.5
done
[ "$(count_bt p1 'apiary executor')" = "$WORKERS" ] ||
	fail "the primary runs $(count_bt p1 'apiary executor') executors, not $WORKERS"

# apiary_result on the standby sees a workflow that the primary runs
# finish (no commit there wakes it); the workflow is then removed again
p1 -c "SELECT apiary_start('fo_pause', '[]', 'sb-wait')" >/dev/null
poll_eq 20 1 p2 -c "SELECT count(*) FROM apiary.workflows WHERE id = 'sb-wait'" ||
	fail "the standby has not got workflow sb-wait"
# (waiting with no timeout of its own; statement_timeout keeps a hang short)
out=$(PGOPTIONS="-c statement_timeout=20s" p2 -c "SELECT apiary_result('sb-wait')" 2>&1)
[ "$out" = 7 ] || fail "apiary_result on the standby: $out"
p1 -c "DELETE FROM apiary.tasks WHERE workflow = 'sb-wait'" \
	-c "DELETE FROM apiary.workflows WHERE id = 'sb-wait'" >/dev/null
# changes on the standby are refused as in any read-only transaction
for stmt in "SELECT apiary_cancel('sb-wait')" "SELECT apiary_resume('sb-wait')" \
	"SELECT apiary_register('fo_pause()')"; do
	out=$(p2 -v VERBOSITY=sqlstate -c "$stmt" 2>&1 || true)
	[ "$out" = "ERROR:  25006" ] || fail "$stmt on the standby: $out"
done

# --- 4. start the workflows, crash the primary mid-run, promote -----------------
# Five workflows every 0.1 s, each in a transaction of its own: faster than
# the executors can finish them (4 tasks of 20-50 ms each per workflow, 4
# executors: at most ~28 workflows a second), so at the crash there are
# workflows in every phase, and executors pick up tasks of younger workflows
# between those of older ones.
for ((w = 1; w <= WORKFLOWS; w += 5)); do
	echo "SELECT count(apiary_start('fo_root', to_jsonb(w), 'fo-' || w))
	      FROM generate_series($w, least($w + 4, $WORKFLOWS)) w;"
	echo "SELECT pg_sleep(0.1);"
done | p1 >/dev/null || fail "could not start the workflows"
started_lsn=$(p1 -c "SELECT pg_current_wal_lsn()")
poll_eq 30 t p2 -c "SELECT pg_last_wal_replay_lsn() >= '$started_lsn'" ||
	fail "the standby did not replay up to $started_lsn"
[ "$(p2 -c "SELECT count(*) FROM apiary.workflows")" = "$WORKFLOWS" ] ||
	fail "the standby has not got the $WORKFLOWS workflows"

# once a fifth of the workflows have finished (usually already), crash
poll_eq 60 t p1 -c "SELECT count(*) >= $WORKFLOWS / 5 FROM apiary.workflows WHERE state <> 'running'" ||
	fail "the workflows are not making progress on the primary"
if [ "$TAIL" = 1 ]; then
	# Cut the standby off and let the primary commit some ten more tasks:
	# a tail the standby never receives, lost with the primary.
	cut=$(p1 -c "SELECT count(*) FROM apiary.tasks WHERE state = 'done'")
	p2 -c "ALTER SYSTEM SET primary_conninfo = ''" -c "SELECT pg_reload_conf()" >/dev/null ||
		fail "could not disconnect the standby"
	poll_eq 10 0 p2 -c "SELECT count(*) FROM pg_stat_wal_receiver" ||
		fail "the standby's WAL receiver did not stop"
	poll_eq 30 t p1 -c "SELECT count(*) >= $cut + 10 FROM apiary.tasks WHERE state = 'done'" ||
		fail "the primary made no progress after the standby was cut off"
fi
primary_done=$(p1 -c "SELECT count(*) FROM apiary.workflows WHERE state = 'done'")
primary_tasks=$(p1 -c "SELECT count(*) FROM apiary.tasks WHERE state = 'done'")
# Stop the postmaster so that it forks nothing more, then kill it and all of
# its children at once (each child is its own process group, so a group kill
# would not reach them).
pm=$(head -n 1 "$d1/data/postmaster.pid")
kill -STOP "$pm"
killed=("$pm" $(pgrep -P "$pm"))
kill -KILL "${killed[@]}" 2>/dev/null
poll 10 bash -c 'for p; do kill -0 "$p" 2>/dev/null && exit 1; done; exit 0' _ "${killed[@]}" ||
	fail "the primary's processes survived SIGKILL"
killed=()
[ "$primary_done" -lt "$WORKFLOWS" ] ||
	fail "all $WORKFLOWS workflows were done before the crash: the test would prove nothing; lengthen the workload"

# what the standby has at promotion, once it has replayed all it received:
# the history that survives.  A record the stream was cut off in the middle
# of is never replayed, so replay may stop short of what was received: it
# is done when it has caught up or has not moved for a second.
replayed=""
still=0
for _ in $(seq 100); do
	state=$(p2 -c "SELECT pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()")
	[ "${state%%|*}" = t ] && break
	if [ "${state#*|}" = "$replayed" ]; then
		still=$((still + 1))
		[ "$still" -ge 10 ] && break
	else
		replayed=${state#*|}
		still=0
	fi
	sleep 0.1
done
[ "${state%%|*}" = t ] || [ "$still" -ge 10 ] ||
	fail "the standby does not finish replaying what it received"
standby_done=$(p2 -c "SELECT count(*) FROM apiary.workflows WHERE state = 'done'")
standby_tasks=$(p2 -c "SELECT count(*) FROM apiary.tasks WHERE state = 'done'")
standby_ready=$(p2 -c "SELECT count(*) FROM apiary.tasks WHERE state = 'pending'")
n=$(count_bt p2 'apiary executor')
[ "$n" = 0 ] || fail "$n apiary executor(s) running on the standby with pending tasks replayed"
[ "$standby_done" -lt "$WORKFLOWS" ] ||
	fail "all workflows were done in the replicated history before the crash: lengthen the workload"

as_pg "$PG_BIN/pg_ctl" -D "$d2/data" -w -t 60 promote >/dev/null || fail "promotion failed"
[ "$(p2 -c 'SELECT pg_is_in_recovery()')" = f ] || fail "the standby is still in recovery after promotion"
t_promoted=$(now_ms)

# --- 5. on the promoted server: everything completes, exactly once --------------
poll_eq 15 "$WORKERS" count_bt p2 'apiary executor' ||
	fail "the promoted server runs $(count_bt p2 'apiary executor') executors, not $WORKERS"
poll_eq "$DEADLINE" 0 p2 -c "SELECT count(*) FROM apiary.workflows WHERE state = 'running'" || {
	p2 -c "SELECT state, count(*) FROM apiary.tasks GROUP BY state ORDER BY state"
	fail "workflows still running ${DEADLINE}s after promotion: $(p2 -c "SELECT count(*) FROM apiary.workflows WHERE state = 'running'") of $WORKFLOWS"
}
t_finished=$(now_ms)

# apiary_result works on the new primary too
[ "$(p2 -c "SELECT apiary_result('fo-1', '10 s')")" = 36 ] ||
	fail "apiary_result('fo-1') on the promoted server is not 36"

problems=$(p2 <<SQL
SELECT 'workflow ' || id || ' ' || state || ': ' || coalesce(output::text, error::text, 'null')
  FROM apiary.workflows
 WHERE state <> 'done' OR output IS DISTINCT FROM to_jsonb(30 * substr(id, 4)::int + 6)
UNION ALL
SELECT 'task ' || id || ' (' || workflow || ' ' || function || ') is ' || state
  FROM apiary.tasks WHERE state <> 'done'
UNION ALL
SELECT 'workflow ' || w || ' step ' || s || ' ran ' || coalesce(n, 0) || ' times'
  FROM generate_series(1, $WORKFLOWS) w CROSS JOIN generate_series(0, 3) s
  LEFT JOIN steps ON workflow = w AND step = s
 WHERE n IS DISTINCT FROM 1
UNION ALL
SELECT 'step row for unknown workflow ' || workflow || ' step ' || step
  FROM steps WHERE workflow NOT BETWEEN 1 AND $WORKFLOWS OR step NOT BETWEEN 0 AND 3
UNION ALL
SELECT 'workflows: ' || count(*) FROM apiary.workflows HAVING count(*) <> $WORKFLOWS
UNION ALL
SELECT 'tasks: ' || count(*) FROM apiary.tasks HAVING count(*) <> 4 * $WORKFLOWS
SQL
) || fail "could not check the promoted server"
if [ -n "$problems" ]; then
	echo "$problems" | head -n 40
	fail "$(echo "$problems" | wc -l) problem(s) on the promoted server"
fi
n=$(count_bt p2 'apiary executor')
[ "$n" = "$WORKERS" ] || fail "the promoted server runs $n executors, not $WORKERS"

# The old primary's own history, for the record: restarted (crash recovery)
# without executors, it shows what it had committed that never reached the
# standby -- tasks that ran again after promotion -- and it too must have
# run no step twice.
lost="unknown"
if as_pg "$PG_BIN/pg_ctl" -D "$d1/data" -l "$d1/server.log" -w -t 60 \
	-o "-c apiary.workers=0" start >/dev/null 2>&1; then
	old_tasks=$(p1 -c "SELECT count(*) FROM apiary.tasks WHERE state = 'done'")
	lost=$((old_tasks - standby_tasks))
	[ "$TAIL" = 0 ] || [ "$lost" -gt 0 ] ||
		fail "the standby was cut off, yet the old primary has no task it lacks"
	twice=$(p1 -c "SELECT count(*) FROM steps WHERE n <> 1")
	[ "$twice" = 0 ] || fail "$twice step(s) ran more than once on the old primary"
	pg_stop "$d1"
else
	echo "note: the old primary's data directory did not start again"
fi

after=$((WORKFLOWS - standby_done))
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }
echo "primary shortly before the crash: $primary_done/$WORKFLOWS workflows, $primary_tasks/$((4 * WORKFLOWS)) tasks done"
echo "standby at promotion: $standby_done/$WORKFLOWS workflows, $standby_tasks tasks done, $standby_ready tasks pending"
echo "unreplicated tail: $lost task(s) committed on the old primary but not on the standby, run again after promotion"
echo "promoted: $after workflows completed in $(secs $((t_finished - t_promoted))) s; total $(secs $(($(now_ms) - t0))) s"
echo "ok: failover: $standby_done/$WORKFLOWS workflows done before the crash, $after completed after promotion, $((4 * WORKFLOWS)) steps each ran once, no executor on the standby"
