#!/usr/bin/env bash
# apiary_cancel and apiary_resume racing the executors: every workflow ends
# with a clear outcome, nothing is half-written, and the server stays up.
#
# 150 workflows of the shapes in test/recovery/shapes.sql (fan-out, fan-in
# through futures, chains of futures); every task counts itself in steps
# (workflow, step) in its own transaction and then sleeps a few
# milliseconds, so that a cancel often finds it running.
#
# While 4 executors run them, 3 sessions call apiary_cancel, apiary_resume,
# both in a row, or apiary_status on random workflows, one autocommitted
# statement each (and now and then on an id nobody started, which must
# answer "does not exist"; any other error fails the test), and a fourth
# terminates a random executor every tenth of a second.  Then every
# workflow that is cancelled or failed is resumed, until all are done; one
# left running with a cancelled or failed task fails the test at once.
# At the end: every workflow is done with the output computed independently
# from its input; every step's effect is counted exactly once (a task
# cancelled while it ran rolled its effects back, and ran once more after
# the resume); every task is done and no other task exists; apiary_status
# and apiary_result agree with the tables; the executors still run; the log
# shows no crash.
#
# CANCEL_WORKFLOWS=n and CANCEL_ROUNDS=n (rounds per session, of one or two
# statements) change the load, PORT=p fixes the port.
set -euo pipefail
. "$(dirname "$0")/../../script/lib.sh"

N=${CANCEL_WORKFLOWS:-150}
ROUNDS=${CANCEL_ROUNDS:-1500}
RACERS=3
GHOSTS=5   # ids ghost-1 .. ghost-5 are never started

now_ms() { local t=${EPOCHREALTIME//[.,]/}; echo $((10#$t / 1000)); }
T0=$(now_ms)

# a loopback port nobody listens on, from a random start so that concurrent
# runs rarely pick the same one
free_port() {
	local i p start=$RANDOM
	for i in $(seq 0 99); do
		p=$((55601 + (start + i) % 99))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

fail() {
	echo "FAIL: $*"
	echo "--- server log (last 40 lines)"
	tail -n 40 "$dir/server.log" 2>/dev/null || true
	exit 1
}

port=${PORT:-$(free_port)} || { echo "FAIL: no free port in 55601-55699"; exit 1; }
throwaway_server "$port" "apiary.workers = 4" || fail "server did not start on port $port"
racers=()
trap 'for p in "${racers[@]}"; do kill "$p" 2>/dev/null; done; wait; pg_stop "$dir"; rm -rf "$dir"' EXIT

psql_ -c "CREATE EXTENSION apiary" >/dev/null || fail "setup failed"
psql_ -v N="$N" -v sleep_min=0.002 -v sleep_spread=0.008 \
	-f "$APIARY_ROOT/test/recovery/shapes.sql" >/dev/null || fail "setup failed"
total=$(psql_ -c "SELECT count(*) FROM expected_step") || fail "setup failed"

# each racing session's statements: cancel, resume or status of a random
# workflow, now and then of an id nobody started
for r in $(seq 1 "$RACERS"); do
	for _ in $(seq 1 "$ROUNDS"); do
		if [ $((RANDOM % 50)) -eq 0 ]; then
			id="ghost-$((RANDOM % GHOSTS + 1))"
		else
			id="wf-$((RANDOM % N + 1))"
		fi
		case $((RANDOM % 10)) in
		0 | 1 | 2) echo "SELECT apiary_cancel('$id');" ;;
		3 | 4 | 5) echo "SELECT apiary_resume('$id');" ;;
		6 | 7 | 8) echo "SELECT apiary_cancel('$id');"
		           echo "SELECT apiary_resume('$id');" ;;
		9) echo "SELECT count(*) FROM apiary_status('$id');" ;;
		esac
	done >"$dir/race-$r.sql"
done

psql_ -c "SELECT count(apiary_start('wf_root', jsonb_build_object('wf', 'wf-' || n, 'n', n), 'wf-' || n))
          FROM generate_series(1, $N) n" >/dev/null || fail "apiary_start failed"
started_ms=$(now_ms)
# the race is about running tasks: it begins once the executors have begun
wait_sql "SELECT EXISTS (SELECT FROM apiary.tasks WHERE started_at IS NOT NULL)" 100 ||
	fail "no task started within 10 s"

for r in $(seq 1 "$RACERS"); do
	pg_psql "$dir" "$port" -d postgres -qAt -v ON_ERROR_STOP=0 \
		-f "$dir/race-$r.sql" >/dev/null 2>"$dir/race-$r.err" &
	racers+=($!)
done
# and now and then an executor is terminated (its task rolls back, and the
# launcher starts another): a task cancelled, resumed, or both while its
# executor goes
(
	while :; do
		sleep 0.1
		psql_ -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		          WHERE backend_type = 'apiary executor' ORDER BY random() LIMIT 1" >/dev/null || true
	done
) &
terminator=$!
race_rc=0
for p in "${racers[@]}"; do wait "$p" || race_rc=$?; done
kill "$terminator" 2>/dev/null; wait "$terminator" 2>/dev/null || true
racers=()
race_ms=$(($(now_ms) - started_ms))
[ "$race_rc" -eq 0 ] || { cat "$dir"/race-*.err; fail "a racing session exited with status $race_rc"; }

# every error must be the expected one, for an id nobody started
unexpected=$(cat "$dir"/race-*.err | grep -vE '^psql:[^ ]* ERROR:  workflow "ghost-[0-9]+" does not exist$' || true)
[ -z "$unexpected" ] || { echo "$unexpected" | head -n 20; fail "unexpected errors from apiary_cancel/apiary_resume/apiary_status"; }
ghost_errors=$(cat "$dir"/race-*.err | grep -c 'does not exist' || true)
ghost_calls=$(cat "$dir"/race-*.sql | grep -c "'ghost-" || true)
calls=$(cat "$dir"/race-*.sql | wc -l)
[ "$ghost_errors" -eq "$ghost_calls" ] ||
	fail "$ghost_calls calls named an unknown workflow but $ghost_errors said it does not exist"
at_race_end=$(psql_ -F ' ' -c "SELECT count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'running'),
                                      count(*) FILTER (WHERE state = 'cancelled'), count(*) FILTER (WHERE state = 'failed')
                               FROM apiary.workflows") || fail "server not answering after the race"

# resume whatever is stopped, until every workflow is done
deadline=$(($(now_ms) + 40000))
resumed=0
while :; do
	counts=$(psql_ -F ' ' -c "SELECT count(*) FILTER (WHERE state = 'done'),
	                                count(*) FILTER (WHERE state IN ('cancelled', 'failed')),
	                                count(*) FILTER (WHERE state = 'running' AND EXISTS
	                                  (SELECT FROM apiary.tasks t WHERE t.role = w.role AND t.workflow = w.id
	                                      AND t.state IN ('cancelled', 'failed')))
	                         FROM apiary.workflows w") || fail "server not answering"
	read -r done_ stopped stuck <<<"$counts"
	[ "$done_" -eq "$N" ] && break
	# Every task's outcome reaches the root through futures, and cancel,
	# resume and an executor's commit each change a workflow and its tasks
	# in one transaction: a running workflow with a cancelled or failed task
	# has nothing left to run it and nobody resumes it.
	if [ "$stuck" -gt 0 ]; then
		echo "running workflows with a cancelled or failed task (workflow, task, function, state, waiting_for, linked_to, error):"
		psql_ -F ' | ' -c "SELECT t.workflow, t.id, t.function, t.state, t.waiting_for, t.linked_to, t.error
		          FROM apiary.tasks t JOIN apiary.workflows w ON w.role = t.role AND w.id = t.workflow
		          WHERE w.state = 'running' AND w.id IN (SELECT workflow FROM apiary.tasks
		                                                 WHERE state IN ('cancelled', 'failed'))
		          ORDER BY t.workflow, t.id LIMIT 40" | sed 's/^/  /'
		fail "$stuck workflow(s) left running with a cancelled or failed task: they never finish"
	fi
	if [ "$(now_ms)" -gt "$deadline" ]; then
		echo "workflows by state:"
		psql_ -c "SELECT state, count(*) FROM apiary.workflows GROUP BY 1 ORDER BY 1" | sed 's/^/  /'
		echo "unfinished workflows' tasks (workflow, task, function, state, waiting_for, linked_to):"
		psql_ -c "SELECT t.workflow, t.id, t.function, t.state, t.waiting_for, t.linked_to
		          FROM apiary.tasks t JOIN apiary.workflows w ON w.role = t.role AND w.id = t.workflow
		          WHERE w.state <> 'done' ORDER BY t.workflow, t.id LIMIT 40" | sed 's/^/  /'
		fail "workflows not all done 40 s after the race ($done_ of $N done)"
	fi
	if [ "$stopped" -gt 0 ]; then
		psql_ >/dev/null <<<"SELECT format('SELECT apiary_resume(%L)', id) FROM apiary.workflows
		                     WHERE state IN ('cancelled', 'failed') ORDER BY id \\gexec" ||
			fail "apiary_resume failed after the race"
		resumed=$((resumed + stopped))
	else
		sleep 0.1
	fi
done

# verify
problems=0
check "workflows not done, or missing (workflow, state, error)" \
	"SELECT e.workflow, w.state, w.error FROM expected e
	   LEFT JOIN apiary.workflows w ON w.id = e.workflow
	 WHERE w.state IS DISTINCT FROM 'done' ORDER BY e.n"
check "workflows nobody started" \
	"SELECT id FROM apiary.workflows EXCEPT SELECT workflow FROM expected"
check "wrong outputs (workflow, expected, got)" \
	"SELECT e.workflow, e.output, w.output FROM expected e JOIN apiary.workflows w ON w.id = e.workflow
	 WHERE w.output IS DISTINCT FROM to_jsonb(e.output) ORDER BY e.n"
check "apiary_result differs from the expected output (workflow, expected, got)" \
	"SELECT workflow, output, r FROM (SELECT e.*, apiary_result(e.workflow, '5 s') AS r FROM expected e) x
	 WHERE r IS DISTINCT FROM to_jsonb(output) ORDER BY n"
check "steps whose effects count more than once (workflow, step, n)" \
	"SELECT workflow, step, n FROM steps WHERE n <> 1 ORDER BY workflow, step"
check "expected steps with no effect" \
	"SELECT workflow, step FROM expected_step EXCEPT SELECT workflow, step FROM steps ORDER BY 1, 2"
check "effects of steps that should not exist" \
	"SELECT workflow, step FROM steps EXCEPT SELECT workflow, step FROM expected_step ORDER BY 1, 2"
check "tasks not done (task, workflow, function, state, waiting_for, linked_to)" \
	"SELECT id, workflow, function, state, waiting_for, linked_to FROM apiary.tasks
	 WHERE state <> 'done' ORDER BY id"
check "tasks per workflow differ from the steps expected (workflow, tasks, steps)" \
	"SELECT workflow, t, s FROM
	   (SELECT workflow, count(*) AS s FROM expected_step GROUP BY 1) es
	   FULL JOIN (SELECT workflow, count(*) AS t FROM apiary.tasks GROUP BY 1) ts USING (workflow)
	 WHERE t IS DISTINCT FROM s ORDER BY 1"
check "done tasks with an error or without a finish time (task, state, error)" \
	"SELECT id, state, error FROM apiary.tasks
	 WHERE state = 'done' AND (error IS NOT NULL OR finished_at IS NULL) ORDER BY id"
check "futures waited for that are not done, or waits on unknown tasks (future, task)" \
	"SELECT x.future, x.task FROM apiary.waits x
	   LEFT JOIN apiary.tasks f ON f.id = x.future LEFT JOIN apiary.tasks t ON t.id = x.task
	 WHERE f.state IS DISTINCT FROM 'done' OR t.id IS NULL ORDER BY 1, 2"
check "apiary_status disagrees with apiary.tasks (workflow)" \
	"SELECT e.workflow FROM expected e
	 WHERE EXISTS ((SELECT task, parent, function, state, attempts, waiting_for, linked_to, output, error,
	                       queued_at, started_at, finished_at FROM apiary_status(e.workflow))
	               EXCEPT
	               (SELECT id, parent, function, state, attempts, waiting_for, linked_to, output, error,
	                       queued_at, started_at, finished_at FROM apiary.tasks WHERE workflow = e.workflow))
	    OR (SELECT count(*) FROM apiary_status(e.workflow))
	       <> (SELECT count(*) FROM apiary.tasks WHERE workflow = e.workflow)
	 ORDER BY e.n"
check "executors not running (expected 4)" \
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apiary executor' HAVING count(*) <> 4"

# the race must have hit running tasks: a task cancelled while it ran was
# executed, rolled back, and executed again after the resume (apiary.stats
# counts executions; a resume starts a task's attempts from 0 again)
read -r reruns tasks <<<"$(psql_ -F ' ' -c "SELECT (SELECT sum(calls) FROM apiary.stats) - count(*), count(*)
                                           FROM apiary.tasks")"
if [ "${reruns:-0}" -le 0 ]; then
	echo "  vacuous: no task was cancelled while it ran; make the race longer" \
		"(it took $race_ms ms; after it, done/running/cancelled/failed workflows: $at_race_end)"
	problems=$((problems + 1))
fi

crashes=$(grep -E "PANIC|TRAP|terminated by signal|server process .* was terminated" "$dir/server.log" || true)
if [ -n "$crashes" ]; then
	echo "  crashes in the server log:"
	echo "$crashes" | head -n 10 | sed 's/^/    /'
	problems=$((problems + 1))
fi

[ "$problems" -eq 0 ] || fail "$problems check(s) failed"
terminated=$(grep -c 'terminating background worker "apiary executor"' "$dir/server.log" || true)
read -r r_done r_running r_cancelled r_failed <<<"$at_race_end"
echo "ok: $N workflows ($total steps) done, each step's effect once, through $calls racing cancel/resume/status calls in $((race_ms / 1000)).$((race_ms % 1000 / 100)) s (after them: $r_done done, $r_running running, $r_cancelled cancelled, $r_failed failed; $resumed resumes to finish; $reruns executions rolled back and run again, beyond one for each of the $tasks tasks; $terminated executors terminated) in $((($(now_ms) - T0) / 1000)) s"
