#!/usr/bin/env bash
# Benchmark (not a test): what apiary.provenance costs, on one throwaway
# server (wal_level = logical, fsync and synchronous_commit on), with the
# modes off, writes and all taking turns in every round so that drift on a
# shared machine falls on all three alike.
#
#   invoke   pgbench clients calling apiary_invoke('bump'): a transactional
#            function that reads one row and updates another
#   wf3      3-step workflows (each step updates a counter and queues the
#            next), started by pgbench clients; throughput is completed
#            workflows / time from first start to last finish
#
# After each run the collector must catch up (its slot's lag back under
# 64 kB) before the next run starts; the time that takes is reported, so a
# collector that cannot keep up shows.  At the end every write of every
# run in writes/all mode must be in apiary.provenance exactly once.
#
# Prints ratios (writes / off, all / off: median over rounds of the ratio
# within a round) and writes test/bench/results/provenance.md.
# Environment: BENCH_SECONDS (default 10), BENCH_ROUNDS (default 3),
# BENCH_CLIENTS (default "1 4"), BENCH_PORT, BENCH_OUT.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

secs=${BENCH_SECONDS:-10}
rounds=${BENCH_ROUNDS:-3}
read -r -a clients <<<"${BENCH_CLIENTS:-1 4}"
out=${BENCH_OUT:-$APIARY_ROOT/test/bench/results/provenance.md}
modes=(off writes all)

bench_server "${BENCH_PORT:-55610}" "max_connections = 60" \
	"wal_level = logical" "output_plugin_libraries = 'apiary'" "apiary.workers = 4"

psql_ -c 'CREATE EXTENSION apiary' >/dev/null
chain_setup
psql_ >/dev/null <<'SQL'
CREATE TABLE prices (id int PRIMARY KEY, price int NOT NULL);
INSERT INTO prices SELECT g, g FROM generate_series(1, 1000) g;
CREATE FUNCTION bump(id int) RETURNS bigint LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
DECLARE p int;
BEGIN
  SELECT price INTO p FROM prices WHERE prices.id = bump.id;
  UPDATE counters SET n = n + p WHERE counters.id = bump.id;
  RETURN p;
END $$;
-- what each run expects in apiary.provenance
CREATE TABLE expected (mode text, writes bigint, reads bigint);
SQL
printf '\\set id random(1, 1000)\nSELECT apiary_invoke('"'"'bump'"'"', jsonb_build_object('"'"'id'"'"', :id::int));\n' >"$dir/invoke.sql"
chmod 644 "$dir"/*.sql

set_mode() { # mode: reload, and wait until the collector decodes (or the slot is gone)
	local ready="state = 'recording' AND EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = 'apiary_provenance' AND active)"
	[ "$1" = off ] && ready="NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = 'apiary_provenance')"
	psql_ -c "ALTER SYSTEM SET apiary.provenance = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
	for _ in $(seq 1 300); do
		[ "$(psql_ -c "SELECT current_setting('apiary.provenance') = '$1' AND $ready FROM apiary.provenance_status")" = t ] && return
		sleep 0.1
	done
	echo "provenance did not switch to $1"; exit 1
}
catch_up() { # -> seconds the collector took to catch up after a run
	local t0 lag
	t0=$(date +%s.%N)
	for _ in $(seq 1 3000); do
		lag=$(psql_ -c "SELECT coalesce(lag_bytes, 0) FROM apiary.provenance_status")
		[ "$lag" -lt 65536 ] && break
		sleep 0.1
	done
	[ "$lag" -lt 65536 ] || { echo "the collector did not catch up (lag $lag bytes)"; exit 1; }
	awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'
}

declare -A rate lagtime
run_invoke() { # mode clients round
	local log="$dir/invoke.log" tps n
	bench -c "$2" -j "$(( $2 < 2 ? $2 : 2 ))" -T "$secs" -f "$dir/invoke.sql" >"$log" 2>&1 ||
		{ cat "$log"; echo "pgbench failed"; exit 1; }
	tps=$(awk '/^tps = /{print $3}' "$log")
	n=$(awk '/^number of transactions actually processed/{print $NF}' "$log" | cut -d/ -f1)
	rate[invoke,$1,$2,$3]=$tps
	[ "$1" = off ] || psql_ -c "INSERT INTO expected VALUES ('$1', $n, CASE WHEN '$1' = 'all' THEN $n ELSE 0 END)"
}
run_wf3() { # mode clients round
	local r
	psql_ -c "VACUUM counters" >/dev/null
	r=$(workflow_rate "$dir/wf3.sql" "$2") || exit 1
	rate[wf3,$1,$2,$3]=${r% *}
	[ "$1" = off ] || psql_ -c "INSERT INTO expected VALUES ('$1', 3 * ${r#* }, 0)"
}

for r in $(seq 1 "$rounds"); do
	for c in "${clients[@]}"; do
		for m in "${modes[@]}"; do
			set_mode "$m"
			run_invoke "$m" "$c" "$r"
			lagtime[invoke,$m,$c,$r]=$(catch_up)
			run_wf3 "$m" "$c" "$r"
			lagtime[wf3,$m,$c,$r]=$(catch_up)
			echo "  round $r, $c client(s), $m: invoke ${rate[invoke,$m,$c,$r]} tps (caught up in ${lagtime[invoke,$m,$c,$r]} s), wf3 ${rate[wf3,$m,$c,$r]}/s (caught up in ${lagtime[wf3,$m,$c,$r]} s)"
		done
	done
done

# nothing lost, nothing twice: every write of every recorded run, once
psql_ -c "SELECT pg_sleep(1)" >/dev/null
got=$(psql_ -c "SELECT count(*) FILTER (WHERE operation <> 'read') || ' ' || count(*) FILTER (WHERE operation = 'read') FROM apiary.provenance WHERE relname = 'public.counters' OR relname = 'public.prices'")
want=$(psql_ -c "SELECT sum(writes) || ' ' || sum(reads) FROM expected")
# all mode also records the rows the updates read (their own counter rows)
read -r got_w got_r <<<"$got"
read -r want_w want_r <<<"$want"
[ "$got_w" -eq "$want_w" ] || { echo "expected $want_w provenance rows of writes, found $got_w"; exit 1; }
[ "$got_r" -ge "$want_r" ] || { echo "expected at least $want_r rows read, found $got_r"; exit 1; }
echo "checked: $got_w writes recorded, each once; $got_r rows read recorded"

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { # workload mode clients -> "median r1 r2 ..."
	local rs=()
	for r in $(seq 1 "$rounds"); do
		rs+=("$(awk -v a="${rate[$1,$2,$3,$r]}" -v b="${rate[$1,off,$3,$r]}" 'BEGIN { printf "%.3f", a / b }')")
	done
	echo "$(printf '%s\n' "${rs[@]}" | median) ${rs[*]}"
}
{
	echo "# provenance benchmark"
	echo
	echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $("$PG_CONFIG" --version), nproc $(nproc), ${secs} s per run, ${rounds} rounds, fsync and synchronous_commit on, wal_level = logical, apiary.workers = 4, commit $(git -C "$APIARY_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)."
	echo
	echo "| workload | clients | off (median) | writes (median) | all (median) | writes ÷ off (target ≥ 0.95) | all ÷ off | rounds (writes ÷ off) | rounds (all ÷ off) |"
	echo "|---|---:|---:|---:|---:|---:|---:|---|---|"
	for w in invoke wf3; do
		for c in "${clients[@]}"; do
			read -r rw rws <<<"$(ratio "$w" writes "$c")"
			read -r ra ras <<<"$(ratio "$w" all "$c")"
			med() { for r in $(seq 1 "$rounds"); do echo "${rate[$w,$1,$c,$r]}"; done | median; }
			printf '| %s | %s | %.0f | %.0f | %.0f | %.2fx | %.2fx | %s | %s |\n' "$w" "$c" \
				"$(med off)" "$(med writes)" "$(med all)" "$rw" "$ra" "$rws" "$ras"
		done
	done
	echo
	echo "Seconds the collector needed after each run to bring its lag under 64 kB (writes / all, every round):"
	echo
	for w in invoke wf3; do
		for c in "${clients[@]}"; do
			line="- $w, $c client(s):"
			for r in $(seq 1 "$rounds"); do
				line="$line ${lagtime[$w,writes,$c,$r]} / ${lagtime[$w,all,$c,$r]};"
			done
			echo "${line%;}"
		done
	done
} >"$out"
echo
cat "$out"
echo "written to $out"
