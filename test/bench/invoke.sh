#!/usr/bin/env bash
# Benchmark: what does apiary_invoke cost next to calling the function
# directly, and next to a client driving the same transaction round trip by
# round trip (a FaaS function in its own container talking to a remote
# database)?
#
# One throwaway server with realistic durability (fsync and synchronous_commit
# on), a 1000-row counters table, and pgbench at 1 and 8 clients for:
#   direct       SELECT bump(:id)
#   invoke       SELECT apiary_invoke('bump', ...)
#   invoke_key   the same with a fresh key per call (journals every call)
#   interactive  BEGIN; SELECT ... FOR UPDATE; UPDATE; COMMIT  (4 round trips)
#   ro_direct    SELECT peek(:id)
#   ro_invoke    SELECT apiary_invoke('peek', ...)
# Prints a table and the ratios the foundation issue targets, and writes them
# to test/bench/results/invoke.md.  A benchmark, not a test: the targets are
# printed, never enforced; only a failing pgbench or server makes it exit
# non-zero.
#
# fsync latency on shared or virtual disks drifts a lot from one minute to the
# next, so the variants run interleaved, in rounds, and each ratio is the
# median of the ratios within a round (variant and baseline measured minutes
# apart at most).  The table shows median tps and latency, and the tps range.
#
# Environment: BENCH_SECONDS (per run, default 10), BENCH_ROUNDS (default 3),
# BENCH_PORT (default 55490, the next free one is taken), BENCH_CONF (extra
# postgresql.conf lines, separated by ";"), BENCH_OUT (results file).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

secs=${BENCH_SECONDS:-10}
rounds=${BENCH_ROUNDS:-3}
out=${BENCH_OUT:-$APIARY_ROOT/test/bench/results/invoke.md}
IFS=';' read -r -a extra_conf <<<"${BENCH_CONF:-}"
clients=(1 8)

bench_server "${BENCH_PORT:-55490}" "max_connections = 50" "${extra_conf[@]}"

psql_ >/dev/null <<'SQL'
CREATE EXTENSION apiary;
CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
INSERT INTO counters SELECT g, 0 FROM generate_series(1, 1000) g;
CREATE FUNCTION bump(id int) RETURNS bigint LANGUAGE sql AS
  $$ UPDATE counters SET n = n + 1 WHERE counters.id = bump.id RETURNING n $$;
CREATE FUNCTION peek(id int) RETURNS bigint LANGUAGE sql STABLE AS
  $$ SELECT n FROM counters WHERE counters.id = peek.id $$;
SELECT apiary_register('bump(int)');
SELECT apiary_register('peek(int)', 'readonly');
SQL

# One pgbench script per variant.
script() { printf '\\set id random(1, 1000)\n%s\n' "$2" >"$dir/$1.sql"; }
script direct "SELECT bump(:id);"
script invoke "SELECT apiary_invoke('bump', jsonb_build_object('id', :id::int));"
script invoke_key "SELECT apiary_invoke('bump', jsonb_build_object('id', :id::int), gen_random_uuid()::text);"
script interactive "BEGIN;
SELECT n FROM counters WHERE id = :id FOR UPDATE;
UPDATE counters SET n = n + 1 WHERE id = :id;
COMMIT;"
script ro_direct "SELECT peek(:id);"
script ro_invoke "SELECT apiary_invoke('peek', jsonb_build_object('id', :id::int));"

declare -A tps lat
# run_variant VARIANT CLIENTS ROUND: one pgbench run; records tps and mean latency.
run_variant() {
	local v=$1 c=$2 r=$3 log="$dir/$1.$2.$3.log"
	[ "$v" = invoke_key ] && psql_ -c "TRUNCATE apiary.invocations"
	psql_ -c "VACUUM counters" -c "VACUUM apiary.invocations" -c "CHECKPOINT"
	if ! "$PG_BIN/pgbench" -h "$dir" -p "$port" -U postgres -n -M prepared \
		-T "$secs" -c "$c" -j $((c < 2 ? c : 2)) -f "$dir/$v.sql" postgres >"$log" 2>&1; then
		cat "$log" >&2
		echo "ERROR: pgbench failed for $v at $c client(s)" >&2
		exit 1
	fi
	tps[$v:$c:$r]=$(awk '/^tps = .*without initial connection time/ { printf "%.0f", $3 }' "$log")
	lat[$v:$c:$r]=$(awk '/^latency average = / { print $4 }' "$log")
	if [ -z "${tps[$v:$c:$r]}" ] || [ -z "${lat[$v:$c:$r]}" ]; then
		cat "$log" >&2
		echo "ERROR: could not read tps/latency for $v at $c client(s)" >&2
		exit 1
	fi
	printf '  round %s %-12s %2s client(s): %8s tps %8s ms\n' "$r" "$v" "$c" "${tps[$v:$c:$r]}" "${lat[$v:$c:$r]}"
}

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
# cells ARRAY VARIANT CLIENTS: one value per round
cells() { local -n arr=$1; local r; for ((r = 1; r <= rounds; r++)); do echo "${arr[$2:$3:$r]}"; done; }

variants=(direct invoke invoke_key interactive ro_direct ro_invoke)
echo "running $rounds round(s) of ${#variants[@]} variants x ${#clients[@]} client counts x ${secs}s"
for ((r = 1; r <= rounds; r++)); do
	for c in "${clients[@]}"; do
		for v in "${variants[@]}"; do run_variant "$v" "$c" "$r"; done
	done
done
journal=$(psql_ -c "SELECT count(*) FROM apiary.invocations")

# ratio LABEL VARIANT BASELINE TARGET: one line per client count, the median
# over rounds of variant/baseline tps within a round.
ratio() {
	local c r m per
	for c in "${clients[@]}"; do
		per=()
		for ((r = 1; r <= rounds; r++)); do
			per+=("$(awk -v a="${tps[$2:$c:$r]}" -v b="${tps[$3:$c:$r]}" 'BEGIN { printf "%.3f", a / b }')")
		done
		m=$(median "${per[@]}")
		awk -v l="$1" -v c="$c" -v m="$m" -v t="$4" -v per="${per[*]}" -v n="$rounds" 'BEGIN {
			printf "%s (%d client%s): %.2fx", l, c, (c == 1 ? "" : "s"), m
			if (t != "") printf "  (target >= %sx%s)", t, (m >= t ? "" : ", BELOW TARGET")
			if (n > 1) printf "  [rounds: %s]", per
			printf "\n" }'
	done
}
ratios=$(
	ratio "invoke/direct" invoke direct 0.9
	ratio "invoke+key/direct" invoke_key direct 0.8
	ratio "interactive/direct" interactive direct ""
	ratio "read-only invoke/direct" ro_invoke ro_direct 0.7
)

mkdir -p "$(dirname "$out")"
pgver=$(psql_ -c "SHOW server_version")
durability=$(psql_ -c "SELECT format('fsync=%s synchronous_commit=%s', current_setting('fsync'), current_setting('synchronous_commit'))")
{
	echo "# apiary_invoke benchmark"
	echo
	echo "$(date -u '+%Y-%m-%d %H:%M UTC'), PostgreSQL $pgver, nproc $(nproc)," \
		"BENCH_SECONDS=$secs, BENCH_ROUNDS=$rounds, pgbench -M prepared, $durability," \
		"commit $(git -C "$APIARY_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" \
		"(working tree may differ)."
	echo
	echo "| variant | clients | tps (median) | tps (min-max) | avg latency ms (median) |"
	echo "|---|---:|---:|---:|---:|"
	for v in "${variants[@]}"; do
		for c in "${clients[@]}"; do
			mapfile -t t < <(cells tps "$v" "$c" | sort -g)
			echo "| $v | $c | $(median "${t[@]}") | ${t[0]}-${t[-1]} | $(median $(cells lat "$v" "$c")) |"
		done
	done
	echo
	echo "Ratios of tps, measured in this run: median over rounds of the ratio within"
	echo "a round (targets are the foundation issue's; interactive has none, it shows"
	echo "what co-location saves over a client driving the transaction):"
	echo
	echo '```'
	echo "$ratios"
	echo '```'
	echo
	echo "Journal rows after the last invoke_key run: $journal."
} >"$out"

echo
sed -n '/^| variant/,/^$/p' "$out"
echo "$ratios"
echo
echo "written to ${out#"$APIARY_ROOT"/}"
