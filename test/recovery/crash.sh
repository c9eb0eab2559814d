#!/usr/bin/env bash
# Crash recovery: workflows complete, and every step runs exactly once,
# across a crash of an executor and a crash of the postmaster.
#
# 300 workflows mix fan-out and fan-in (a root queues 2-4 leaves and a
# merger that takes their futures as arguments), futures as arguments (the
# merger's future feeds a chain), and chains (each chain step queues an
# "add" task and returns the future of the next step, which takes the add's
# future; 0-6 levels deep).  Every task records itself in steps (workflow,
# step) in its own transaction, then sleeps a little, so that a kill lands
# between that write and the commit; a step that ran twice would show n = 2.
#
# While they run: kill -9 a busy executor once a quarter of the steps are
# done (the postmaster reinitializes and restarts every process), then, at
# 55 %, kill -9 the postmaster itself (and any child that outlives it), and
# restart with pg_ctl.  Then every workflow must be done with the output
# computed independently from its input, every expected step must have run
# exactly once and no other, and no task may be left unfinished.  The kill
# points follow progress, not the clock, so the crashes always land mid-run.
#
# CRASH_WORKFLOWS=n changes the number of workflows, CRASH_CONF adds a
# postgresql.conf line, PORT=p fixes the port,
# KEEP_DIR=d keeps a copy of the server log there.
set -uo pipefail
. "$(dirname "$0")/../../script/lib.sh"

N=${CRASH_WORKFLOWS:-300}

# time in milliseconds, without forking
now_ms() { local t=${EPOCHREALTIME//[.,]/}; echo $((10#$t / 1000)); }
T0=$(now_ms)
say() { local e=$(($(now_ms) - T0)); printf '[%3d.%ds] %s\n' $((e / 1000)) $((e % 1000 / 100)) "$*"; }

# a port nobody listens on, from a random start so that concurrent runs
# rarely pick the same one (a collision is retried below)
free_port() {
	local i p start=$RANDOM
	for i in $(seq 0 99); do
		p=$((55481 + (start + i) % 100))
		if ! ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

dir=
strays=()   # children of the killed postmaster, killed again on exit
cleanup() {
	[ -n "$dir" ] || return 0
	pg_stop "$dir"
	local p
	for p in "${strays[@]}"; do kill -9 "$p" 2>/dev/null; done
	[ -n "${KEEP_DIR:-}" ] && cp "$dir/server.log" "$KEEP_DIR/" 2>/dev/null; rm -rf "$dir"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*"
	echo "--- server log (last 40 lines)"
	tail -n 40 "$dir/server.log" 2>/dev/null
	exit 1
}
# for polling while the server may be restarting: empty output on error
try() { pg_psql "$dir" "$port" -d postgres -qAt -c "$1" 2>/dev/null; }
pm_pid() { head -n 1 "$dir/data/postmaster.pid" 2>/dev/null; }

# poll_steps TARGET LIMIT_S: wait until TARGET steps have committed
poll_steps() {
	local target=$1 limit=$2 end c
	end=$(($(now_ms) + limit * 1000))
	while :; do
		c=$(try "SELECT count(*) FROM steps")
		[ -n "$c" ] && [ "$c" -ge "$target" ] && return 0
		[ "$(now_ms)" -gt "$end" ] && return 1
		sleep 0.1
	done
}

for try_start in 1 2 3; do
	port=${PORT:-$(free_port)} || { echo "FAIL: no free port"; exit 1; }
	dir=$(pg_tmpdir)
	pg_start "$dir" "$port" ${CRASH_CONF:+"$CRASH_CONF"} && break
	[ "$try_start" -eq 3 ] && fail "server did not start"
	echo "server did not start on port $port; trying another"
	pg_stop "$dir"
	rm -rf "$dir"
done
say "server on port $port, $N workflows"

psql_ -c "CREATE EXTENSION apiary" >/dev/null || fail "setup failed"
psql_ -v N="$N" -v sleep_min=0.005 -v sleep_spread=0.02 -f "$(dirname "$0")/shapes.sql" >/dev/null ||
	fail "setup failed"

total=$(psql_ -c "SELECT count(*) FROM expected_step") || fail "setup failed"
say "expecting $total steps (= tasks)"

psql_ -c "SELECT count(apiary_start('wf_root', jsonb_build_object('wf', 'wf-' || n, 'n', n), 'wf-' || n))
          FROM generate_series(1, $N) n" >/dev/null || fail "apiary_start failed"
say "started $N workflows"

# 1. kill -9 a busy executor a quarter of the way through
poll_steps $((total / 4)) 60 || fail "no progress: fewer than $((total / 4)) steps after 60 s"
victim=$(try "SELECT pid || ' ' || query FROM pg_stat_activity
              WHERE backend_type = 'apiary executor' AND state = 'active'
              ORDER BY random() LIMIT 1")
[ -n "$victim" ] || victim=$(try "SELECT pid || ' (idle)' FROM pg_stat_activity
                                 WHERE backend_type = 'apiary executor' LIMIT 1")
[ -n "$victim" ] || fail "no apiary executor in pg_stat_activity"
vpid=${victim%% *}
steps_at=$(try "SELECT count(*) FROM steps")
kill -9 "$vpid" || fail "could not kill executor $vpid"
say "kill -9 executor $vpid (just seen running ${victim#* }) at $steps_at/$total steps"

# the postmaster reinitializes, then the executors must make progress again
kill_ms=$(now_ms)
for _ in $(seq 100); do
	grep -q "all server processes terminated; reinitializing" "$dir/server.log" && break
	sleep 0.1
done
grep -q "all server processes terminated; reinitializing" "$dir/server.log" ||
	fail "the postmaster did not reinitialize within 10 s of the executor's crash"
c0=""
while [ -z "$c0" ] && [ $(($(now_ms) - kill_ms)) -lt 30000 ]; do
	c0=$(try "SELECT count(*) FROM steps")
	sleep 0.1
done
[ -n "$c0" ] || fail "server not accepting connections 30 s after the executor's crash"
poll_steps $((c0 + 1)) 30 || fail "no step committed within 30 s of the crash restart"
say "crash restart: executors running again after $(($(now_ms) - kill_ms)) ms"
poll_steps $((total * 55 / 100)) 60 ||
	fail "fewer than $((total * 55 / 100)) steps 60 s after the executor's crash"

# 2. kill -9 the postmaster, then whatever of its children outlives it
pm=$(pm_pid)
[ -n "$pm" ] || fail "no postmaster.pid"
children=$(ps -o pid= --ppid "$pm" | tr -s ' \n' ' ')
inflight=$(try "SELECT count(*) FROM pg_stat_activity
                WHERE backend_type = 'apiary executor' AND state = 'active'")
kill -9 "$pm" || fail "could not kill the postmaster $pm"
say "kill -9 postmaster $pm (${inflight:-?} tasks in flight, $(echo $children | wc -w) children)"
for _ in $(seq 50); do
	alive=()
	for p in $children; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
	[ ${#alive[@]} -eq 0 ] && break
	sleep 0.1
done
if [ ${#alive[@]} -gt 0 ]; then
	strays=("${alive[@]}")
	ps -o pid=,args= -p "$(IFS=,; echo "${alive[*]}")" | sed 's/^/  still alive after 5 s: /'
	kill -9 "${alive[@]}" 2>/dev/null
	say "killed ${#alive[@]} surviving children"
fi
for _ in $(seq 50); do
	alive=()
	for p in $children; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
	[ ${#alive[@]} -eq 0 ] && break
	sleep 0.1
done
[ ${#alive[@]} -eq 0 ] || fail "children of the postmaster survive kill -9: ${alive[*]}"

# 3. restart and wait for every workflow
out=$(as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start 2>&1) ||
	fail "restart failed: $out"
say "restarted (crash recovery done)"

end=$(($(now_ms) + 120000))
next_report=$(($(now_ms) + 5000))
while :; do
	fin=$(try "SELECT count(*) FILTER (WHERE state <> 'running') || ' ' ||
	                  count(*) FILTER (WHERE state = 'done') FROM apiary.workflows")
	[ -n "$fin" ] && [ "${fin%% *}" -eq "$N" ] && break
	[ "$(now_ms)" -gt "$end" ] && {
		echo "workflows finished/done: ${fin:-?}/$N"
		echo "tasks by state:"
		try "SELECT state, count(*) FROM apiary.tasks GROUP BY 1 ORDER BY 1" | sed 's/^/  /'
		echo "executors:"
		try "SELECT pid, state, query FROM pg_stat_activity WHERE backend_type LIKE 'apiary%'" | sed 's/^/  /'
		fail "workflows did not all finish within 120 s of the restart"
	}
	if [ "$(now_ms)" -gt "$next_report" ]; then
		say "  $(try "SELECT count(*) FROM steps")/$total steps, ${fin%% *} of $N workflows finished"
		next_report=$(($(now_ms) + 5000))
	fi
	sleep 0.5
done
say "all $N workflows finished"

# 4. verify
problems=0
check "workflows not done" \
	"SELECT id, state, error FROM apiary.workflows WHERE state <> 'done' ORDER BY id"
check "missing workflows" \
	"SELECT e.workflow FROM expected e LEFT JOIN apiary.workflows w ON w.id = e.workflow
	 WHERE w.id IS NULL ORDER BY e.n"
check "wrong outputs (workflow, expected, got)" \
	"SELECT e.workflow, e.output, w.output FROM expected e JOIN apiary.workflows w ON w.id = e.workflow
	 WHERE w.output IS DISTINCT FROM to_jsonb(e.output) ORDER BY e.n"
check "steps that ran more than once (workflow, step, n)" \
	"SELECT workflow, step, n FROM steps WHERE n <> 1 ORDER BY workflow, step"
check "expected steps that never ran" \
	"SELECT workflow, step FROM expected_step EXCEPT SELECT workflow, step FROM steps ORDER BY 1, 2"
check "steps that should not exist" \
	"SELECT workflow, step FROM steps EXCEPT SELECT workflow, step FROM expected_step ORDER BY 1, 2"
check "tasks not done (task, workflow, function, state)" \
	"SELECT id, workflow, function, state FROM apiary.tasks WHERE state <> 'done' ORDER BY id"
check "task count differs from expected" \
	"SELECT (SELECT count(*) FROM apiary.tasks) AS tasks, (SELECT count(*) FROM expected_step) AS expected
	 WHERE (SELECT count(*) FROM apiary.tasks) <> (SELECT count(*) FROM expected_step)"

# the crashes must have landed mid-run
# (steps.at and finished_at are clock_timestamp() of the transaction that
# wrote them; pg_postmaster_start_time() of the restarted server separates
# what committed before the crash from what ran after it)
read -r wf_before wf_after steps_before steps_after retried <<<"$(psql_ -F ' ' -c "
	SELECT (SELECT count(*) FROM apiary.workflows WHERE finished_at < pg_postmaster_start_time()),
	       (SELECT count(*) FROM apiary.workflows WHERE finished_at >= pg_postmaster_start_time()),
	       (SELECT count(*) FROM steps WHERE at < pg_postmaster_start_time()),
	       (SELECT count(*) FROM steps WHERE at >= pg_postmaster_start_time()),
	       (SELECT coalesce(string_agg(id || ':' || function || coalesce('/crashes=' || (to_jsonb(t) ->> 'crashes'), '')
	                                   || '/attempts=' || attempts, ',' ORDER BY id), 'none')
	          FROM apiary.tasks t WHERE attempts <> 1 OR (to_jsonb(t) ->> 'crashes')::int > 0)")"
say "before the postmaster crash: $wf_before/$N workflows done, $steps_before/$total steps committed"
say "after the restart: $steps_after steps ran, $wf_after workflows finished; tasks retried or counted as crashed: $retried"
if [ "${wf_after:-0}" -eq 0 ] || [ "${steps_after:-0}" -eq 0 ]; then
	echo "  vacuous: the crash came after the work was done; make the workload longer"
	problems=$((problems + 1))
fi

# no crash but ours: one process killed by a signal, and it was our victim
signals=$(grep -E "terminated by signal" "$dir/server.log" | grep -vF "(PID $vpid)" || true)
if [ -n "$signals" ]; then
	echo "  unexpected process crashes:"
	echo "$signals" | sed 's/^/    /'
	problems=$((problems + 1))
fi

if [ "$problems" -ne 0 ]; then
	fail "$problems check(s) failed"
fi
echo "ok: $N workflows, $total steps exactly once across an executor kill at $steps_at and a postmaster kill at $steps_before steps ($wf_before workflows done before it, $wf_after after) in $((($(now_ms) - T0) / 1000)) s"
