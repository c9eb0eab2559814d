# Sourced by the benchmarks: a throwaway server, psql and pgbench on it,
# and the rate of workflows started by pgbench.
. "$(dirname "${BASH_SOURCE[0]}")/../../script/lib.sh"

# bench_server PORT [postgresql.conf lines...]: install what is missing,
# build and install apiary, start a server with fsync and synchronous
# commit on at the first free port from PORT, removed when the script
# exits.  Sets dir and port.
bench_server() {
	port=$1
	shift
	apiary_deps
	apiary_install
	while (: </dev/tcp/127.0.0.1/"$port") 2>/dev/null; do port=$((port + 1)); done
	dir=$(pg_tmpdir)
	trap 'pg_stop "$dir"; rm -rf "$dir"' EXIT
	pg_start "$dir" "$port" "fsync = on" "synchronous_commit = on" "$@"
}
psql_() { pg_psql "$dir" "$port" -d postgres -qAt "$@"; }
bench() { "$PG_BIN/pgbench" -h "$dir" -p "$port" -U postgres -n -M prepared "$@" postgres; }

# chain_setup: a 1000-row counters table and step(id, k, steps), a chain
# of steps in which each updates a counter and queues the next, returning
# its future; $dir/wf1.sql and $dir/wf3.sql start chains of 1 and 3 steps.
chain_setup() {
	psql_ >/dev/null <<'SQL'
CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
INSERT INTO counters SELECT g, 0 FROM generate_series(1, 1000) g;
CREATE FUNCTION step(id int, k int, steps int) RETURNS jsonb LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  UPDATE counters SET n = n + 1 WHERE counters.id = step.id;
  IF k < steps THEN
    RETURN apiary_queue('step', jsonb_build_object('id', id, 'k', k + 1, 'steps', steps));
  END IF;
  RETURN to_jsonb(k);
END $$;
SQL
	local n
	for n in 1 3; do
		printf '\\set id random(1, 1000)\nSELECT apiary_start('"'"'step'"'"', jsonb_build_object('"'"'id'"'"', :id::int, '"'"'k'"'"', 1, '"'"'steps'"'"', %d));\n' "$n" >"$dir/wf$n.sql"
		chmod 644 "$dir/wf$n.sql"
	done
}

# workflow_rate SCRIPT CLIENTS: pgbench runs SCRIPT (which starts
# workflows) with CLIENTS clients for $secs seconds; then wait until every
# workflow has finished.  Prints "RATE COUNT": workflows completed per
# second from the first start to the last finish, and how many were
# started.
workflow_rate() {
	local before total t0 t1 left log="$dir/workflow_rate.log"
	psql_ -c "VACUUM apiary.tasks, apiary.workflows" >/dev/null
	before=$(psql_ -c "SELECT count(*) FROM apiary.workflows")
	t0=$(psql_ -c "SELECT extract(epoch FROM clock_timestamp())")
	bench -c "$2" -j "$(( $2 < 2 ? $2 : 2 ))" -T "$secs" -f "$1" >"$log" 2>&1 ||
		{ cat "$log" >&2; echo "pgbench failed for $1" >&2; return 1; }
	for _ in $(seq 1 1200); do
		left=$(psql_ -c "SELECT count(*) FROM apiary.workflows WHERE state = 'running'")
		[ "$left" -eq 0 ] && break
		sleep 0.1
	done
	[ "$left" -eq 0 ] || { echo "workflows did not drain" >&2; return 1; }
	t1=$(psql_ -c "SELECT extract(epoch FROM max(finished_at)) FROM apiary.workflows")
	total=$(( $(psql_ -c "SELECT count(*) FROM apiary.workflows") - before ))
	awk -v n="$total" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f %d\n", n / (b - a), n }'
}
