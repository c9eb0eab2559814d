# Sourced by the benchmarks that start workflows with pgbench.
#
# workflow_rate SCRIPT CLIENTS: pgbench runs SCRIPT (which starts
# workflows) with CLIENTS clients for $secs seconds; then wait until every
# workflow has finished.  Prints "RATE COUNT": workflows completed per
# second from the first start to the last finish, and how many were
# started.  Uses the caller's psql_, bench and $dir.
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
