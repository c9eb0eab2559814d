#!/usr/bin/env bash
# Benchmark (not a test): workflows against the plain commits they are made
# of, on one throwaway server with fsync and synchronous_commit on.
#
#   latency      enqueue -> start of a one-step workflow with idle executors,
#                300 times in a row, from the commit timestamp of the
#                apiary_start transaction (track_commit_timestamp) to the
#                task's start; once with the enqueuer committing
#                synchronously, once with synchronous_commit off
#   wf1, wf3     workflows of 1 and 3 steps (a chain: each step updates a
#                counter row in its own transaction and queues the next),
#                started by pgbench clients for BENCH_SECONDS; throughput is
#                completed workflows / time from first start to last finish
#   wait3        3-step workflows whose pgbench clients each start one and
#                wait for its result (apiary_result) before starting the
#                next, as a web back end calling a workflow does; throughput
#                is pgbench's transactions (workflows) per second
#   plain1/3     the same updates as 1 and as 3 autocommit statements per
#                pgbench transaction: the physical limit of the commits
#
# Prints ratios measured in this run and writes test/bench/results/workflows.md.
# Environment: BENCH_SECONDS (default 10), BENCH_CLIENTS (default "1 4 16"),
# BENCH_CONF (extra postgresql.conf lines, separated by ";"),
# BENCH_OUT (results file, default test/bench/results/workflows.md).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

secs=${BENCH_SECONDS:-10}
read -r -a clients <<<"${BENCH_CLIENTS:-1 4 16}"
out=${BENCH_OUT:-$APIARY_ROOT/test/bench/results/workflows.md}
IFS=';' read -r -a extra_conf <<<"${BENCH_CONF:-}"

bench_server "${BENCH_PORT:-55590}" "max_connections = 60" \
	"track_commit_timestamp = on" "apiary.workers = 4" "${extra_conf[@]}"

psql_ -c 'CREATE EXTENSION apiary' >/dev/null
chain_setup
psql_ >/dev/null <<'SQL'
CREATE TABLE probes (sent timestamptz, started timestamptz);
CREATE FUNCTION probe(sent timestamptz, xid text) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  INSERT INTO probes VALUES (sent, clock_timestamp()) RETURNING 1
$$;
SQL

# --- latency: one workflow at a time, executors idle -----------------------
# Series p: the enqueuing transaction commits synchronously, so the time from
# its commit timestamp includes its own WAL flush.  Series q: it commits
# with synchronous_commit off, which leaves apiary's own path: the wake-up
# at commit, the claim, the start of the function.
{
	for i in $(seq 1 300); do
		echo "SELECT apiary_start('probe', jsonb_build_object('sent', clock_timestamp(), 'xid', pg_current_xact_id()::text), 'p$i');"
		echo "SELECT apiary_result('p$i', '30 s');"
	done
	echo "SET synchronous_commit = off;"
	for i in $(seq 1 300); do
		echo "SELECT apiary_start('probe', jsonb_build_object('sent', clock_timestamp(), 'xid', pg_current_xact_id()::text), 'q$i');"
		echo "SELECT apiary_result('q$i', '30 s');"
	done
} >"$dir/probes.sql"
psql_ -f "$dir/probes.sql" >/dev/null
latency() { # series -> "p50 p99" in ms, from the enqueuing commit
	psql_ -F ' ' -c "
	  SELECT round((percentile_cont(0.5) WITHIN GROUP (ORDER BY c) * 1000)::numeric, 3),
	         round((percentile_cont(0.99) WITHIN GROUP (ORDER BY c) * 1000)::numeric, 3)
	  FROM (SELECT extract(epoch FROM p.started - pg_xact_commit_timestamp((w.args->>'xid')::xid)) AS c
	        FROM probes p JOIN apiary.workflows w ON w.args->>'sent' = to_jsonb(p.sent)->>0
	        WHERE w.id LIKE '$1%') x"
}
read -r c50 c99 <<<"$(latency p)"
read -r s50 s99 <<<"$(latency q)"
echo "enqueue->start, sync commit (incl. its WAL flush): p50 ${c50} ms  p99 ${c99} ms"
echo "enqueue->start, async commit (apiary's own path):  p50 ${s50} ms  p99 ${s99} ms  (target p50 < 1 ms)"

# --- throughput -------------------------------------------------------------
printf '\\set id random(1, 1000)\nUPDATE counters SET n = n + 1 WHERE id = :id;\n' >"$dir/plain1.sql"
printf '%s\n' '\set id random(1, 1000)' \
	"SELECT apiary_start('step', jsonb_build_object('id', :id::int, 'k', 1, 'steps', 3)) AS w \\gset" \
	"SELECT apiary_result(:w, '60 s');" >"$dir/wait3.sql"
printf '\\set id random(1, 1000)\nUPDATE counters SET n = n + 1 WHERE id = :id;\nUPDATE counters SET n = n + 1 WHERE id = :id;\nUPDATE counters SET n = n + 1 WHERE id = :id;\n' >"$dir/plain3.sql"
chmod 644 "$dir"/*.sql

declare -A rate
run_tps() { # name clients: pgbench's transactions per second
	local tps
	tps=$(bench -c "$2" -j "$(( $2 < 2 ? $2 : 2 ))" -T "$secs" -f "$dir/$1.sql" 2>&1 |
		awk '/^tps = /{print $3}')
	[ -n "$tps" ] || { echo "pgbench failed for $1"; exit 1; }
	# a pgbench transaction of plain3 is three commits: count transactions
	rate[$1,$2]=$tps
}
run_workflows() { # name steps clients
	local r
	psql_ -c "VACUUM counters" >/dev/null
	r=$(workflow_rate "$dir/$1.sql" "$3") || exit 1
	failed=$(psql_ -c "SELECT count(*) FROM apiary.workflows WHERE state <> 'done'")
	[ "$failed" -eq 0 ] || { echo "$failed workflows did not complete"; exit 1; }
	rate[$1,$3]=${r% *}
}

for c in "${clients[@]}"; do
	run_tps plain1 "$c"
	run_workflows wf1 1 "$c"
	run_tps plain3 "$c"
	run_workflows wf3 3 "$c"
	run_tps wait3 "$c"
	echo "  $c client(s): plain1 ${rate[plain1,$c]} tps, wf1 ${rate[wf1,$c]}/s, plain3 ${rate[plain3,$c]} tps, wf3 ${rate[wf3,$c]}/s, wait3 ${rate[wait3,$c]}/s"
done

# every step took effect exactly once: counters = steps of all workflows
steps=$(psql_ -c "SELECT coalesce(sum((args->>'steps')::int), 0) FROM apiary.workflows WHERE function = 'step'")
plain=$(psql_ -c "SELECT sum(n) FROM counters")
tasks=$(psql_ -c "SELECT count(*) FROM apiary.tasks WHERE state = 'done' AND function = 'step'")
[ "$tasks" -eq "$steps" ] || { echo "expected $steps step tasks done, found $tasks"; exit 1; }
echo "checked: $steps workflow steps done, each once (counters also carry the plain runs: $plain)"

{
	echo "# workflow benchmark"
	echo
	echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $("$PG_CONFIG" --version), nproc $(nproc), ${secs} s per run, fsync and synchronous_commit on, apiary.workers = 4${BENCH_CONF:+, then (later lines win) $BENCH_CONF}."
	echo
	echo "| | p50 | p99 | target |"
	echo "|---|---:|---:|---|"
	echo "| enqueue→start: commit timestamp of the enqueuing transaction → task start, enqueuer with synchronous_commit on (includes its WAL flush) | ${c50} ms | ${c99} ms | |"
	echo "| the same with the enqueuer on synchronous_commit off: apiary's wake-up, claim and start alone | ${s50} ms | ${s99} ms | p50 < 1 ms |"
	echo
	echo "| clients | plain commits/s | 1-step workflows/s | ratio | 3 plain commits/s (pgbench tx) | 3-step workflows/s | ratio (target ≥ 0.5) | 3-step, each client waiting for its result | ratio |"
	echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	for c in "${clients[@]}"; do
		awk -v c="$c" -v p1="${rate[plain1,$c]}" -v w1="${rate[wf1,$c]}" -v p3="${rate[plain3,$c]}" -v w3="${rate[wf3,$c]}" -v r3="${rate[wait3,$c]}" \
			'BEGIN { printf "| %s | %.0f | %.0f | %.2fx | %.0f | %.0f | %.2fx | %.0f | %.2fx |\n", c, p1, w1, w1 / p1, p3, w3, w3 / p3, r3, r3 / p3 }'
	done
} >"$out"
echo
sed -n '/^| clients/,$p' "$out"
echo "written to $out"
