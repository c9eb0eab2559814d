#!/usr/bin/env bash
# Benchmark (not a test): the Apiary paper's workloads on apiary, side by
# side with the same logic as client-side interactive transactions, with
# DBOS Transact workflows, and with the raw SQL as pgbench transactions, on
# one throwaway server (fsync and synchronous_commit on), in one run.
#
#   workloads   shop: browse, cart (add to cart), checkout (a 3-step
#               workflow: reserve stock, create order, charge payment);
#               hotel (DeathStarBench): search, recommend, reserve;
#               retwis: post, follow, timeline (a workflow: one read task per
#               followee, and a merge task that takes their futures);
#               increment (read and increment a counter)
#   systems     apiary       apiary_invoke, one round trip; checkout and
#                            timeline: apiary_start + apiary_result
#               interactive  the same statements from the client, one per
#                            round trip, BEGIN/COMMIT around writes
#               dbos         DBOS Transact workflows (checkout: three
#                            transactional steps; increment: one)
#               raw          the same SQL as pgbench transactions, pipelined
#                            where there are several statements
#
# Every client, the drivers, pgbench and DBOS alike, talks to the server over
# TCP on the loopback interface: round trips of tens of microseconds, the best
# case for the baselines that make many of them.
#
# Closed loop at each client count, then open loop at a fixed arrival rate
# for checkout and increment.  After every run the data is checked: nothing
# lost or duplicated (orders = payments = completed checkouts, stock and
# bookings balance, counters add up).  Writes test/bench/results/paper.md,
# paper.tsv and paper.png.  Only a failing driver, check or server makes it exit non-zero;
# targets are reported, never enforced.
#
# Environment: BENCH_SECONDS (per run, default 5), BENCH_CLIENTS (default
# "1 8 32"), BENCH_OPS (default all), BENCH_SYSTEMS (default "apiary
# interactive raw dbos"), BENCH_RATE (open-loop arrivals/s, default 50;
# 0 skips the open loop), BENCH_OPEN_CLIENTS (connections serving the open
# loop, default 32), BENCH_WORKERS (apiary.workers, default 4), BENCH_RTT_US
# (a network: microseconds added to every round trip of apiary and the
# interactive baseline, default 0; pgbench and DBOS stay on loopback, so
# compare those two), BENCH_NAME (results file names, default paper),
# BENCH_PORT, APIARY_NO_INSTALL=1 (use the installed extension as it is).
set -euo pipefail
. "$(dirname "$0")/../../script/lib.sh"

# BENCH_PG_BIN: the bin directory of another PostgreSQL 15 installation to run
# (with its own apiary), instead of the system's
PG_BIN=${BENCH_PG_BIN:-$PG_BIN}
here=$APIARY_ROOT/test/bench/paper
secs=${BENCH_SECONDS:-5}
read -r -a clients <<<"${BENCH_CLIENTS:-1 8 32}"
read -r -a ops <<<"${BENCH_OPS:-browse cart checkout search recommend reserve post follow timeline increment}"
read -r -a systems <<<"${BENCH_SYSTEMS:-apiary interactive raw dbos}"
open_rate=${BENCH_RATE:-50}
open_clients=${BENCH_OPEN_CLIENTS:-32}
workers=${BENCH_WORKERS:-4}
port=${BENCH_PORT:-55690}
rtt=${BENCH_RTT_US:-0}
results=$APIARY_ROOT/test/bench/results
name=${BENCH_NAME:-paper}
out=$results/$name.md
# the scale (see schema.sql)
declare -A scale=([items]=10000 [shop_users]=10000 [hotels]=100 [nights]=30
	[rt_users]=10000 [follows]=8 [posts]=10 [counters]=10000)

# Node for DBOS and the report: nodejs and npm from Debian where there is no
# node yet (a node from elsewhere brings its own npm, and Debian's npm would
# conflict with it).  DBOS Transact 4.24 asks for node >= 20.
apiary_packages+=(gnuplot-nox libpq-dev)
command -v node >/dev/null || apiary_packages+=(nodejs)
command -v npm >/dev/null || apiary_packages+=(npm)
apiary_deps
[ "${APIARY_NO_INSTALL:-}" = 1 ] || apiary_install

while (: </dev/tcp/127.0.0.1/"$port") 2>/dev/null; do port=$((port + 1)); done
dir=$(pg_tmpdir)
on_exit() {
	local rc=$?
	if [ "$rc" -ne 0 ] && [ -f "$dir/server.log" ]; then
		echo "--- last lines of the server log ---" >&2
		tail -n 25 "$dir/server.log" >&2
	fi
	pg_stop "$dir"
	rm -rf "$dir"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# the driver, and the C functions (their own library, apiary_paper)
gcc -O2 -Wall -Wextra -Werror -o "$dir/driver" "$here/driver.c" \
	-I"$("$PG_BIN/pg_config" --includedir)" -L"$("$PG_BIN/pg_config" --libdir)" -lpq -lpthread -lm
cp -r "$here/module" "$dir/module"
make -C "$dir/module" -s PG_CONFIG="$PG_BIN/pg_config" >/dev/null
make -C "$dir/module" -s PG_CONFIG="$PG_BIN/pg_config" install >/dev/null
# DBOS: the versions pinned in package-lock.json
if [[ " ${systems[*]} " == *" dbos "* ]]; then
	(cd "$here/dbos" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

pg_start "$dir" "$port" "fsync = on" "synchronous_commit = on" "max_connections = 200" \
	"shared_buffers = 512MB" "max_wal_size = 8GB" "checkpoint_timeout = 30min" \
	"apiary.workers = $workers" "shared_preload_libraries = 'apiary, pg_stat_statements'"
psql_() { pg_psql "$dir" "$port" -d postgres -qAt "$@"; }

# The installed extension may be re-installed under us: wait for it.
for try in $(seq 1 20); do
	psql_ -c "CREATE EXTENSION apiary" >/dev/null 2>"$dir/ext.err" && break
	[ "$try" -eq 20 ] && { cat "$dir/ext.err"; echo "ERROR: CREATE EXTENSION apiary keeps failing" >&2; exit 1; }
	echo "CREATE EXTENSION apiary failed ($(head -1 "$dir/ext.err")); retrying in 15 s"
	sleep 15
done
vars=()
for k in "${!scale[@]}"; do vars+=(-v "$k=${scale[$k]}"); done
psql_ "${vars[@]}" -f "$here/schema.sql" >/dev/null
psql_ -c "CREATE EXTENSION pg_stat_statements" >/dev/null
params=()
for k in items shop_users hotels nights rt_users counters; do params+=(-P "$k=${scale[$k]}"); done
pgb_vars=()
for k in "${!scale[@]}"; do pgb_vars+=(-D "$k=${scale[$k]}"); done
cp "$here"/pgbench/*.sql "$dir/" && chmod 644 "$dir"/*.sql

# --- correctness: a snapshot of every counted quantity, before and after ---
names=(orders payments totals_minus_payments stock_minus_lines cart_qty
	reservations booked_minus_nights posts posts_minus_nposts follows
	follows_minus_nfollowing counter_sum workflows_done workflows_not_done unpaid_orders)
invariants=(2 3 6 8 10 13 14) # always 0
snapshot() {
	psql_ -F ' ' -c "SELECT
	  (SELECT count(*) FROM orders), (SELECT count(*) FROM payments),
	  (SELECT coalesce(sum(total), 0) FROM orders) - (SELECT coalesce(sum(amount), 0) FROM payments),
	  (SELECT sum(stock0 - stock) FROM items) - (SELECT coalesce(sum(qty), 0) FROM order_lines),
	  (SELECT coalesce(sum(qty), 0) FROM carts WHERE uid > ${scale[shop_users]} / 2),
	  (SELECT count(*) FROM reservations),
	  (SELECT sum(booked) FROM room_nights) - (SELECT coalesce(sum(rooms * (check_out - check_in)), 0) FROM reservations),
	  (SELECT count(*) FROM posts), (SELECT count(*) FROM posts) - (SELECT sum(nposts) FROM rt_users),
	  (SELECT count(*) FROM follows), (SELECT count(*) FROM follows) - (SELECT sum(nfollowing) FROM rt_users),
	  (SELECT sum(n) FROM counters),
	  (SELECT count(*) FROM apiary.workflows WHERE state = 'done'),
	  (SELECT count(*) FROM apiary.workflows WHERE state <> 'done'),
	  (SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM payments p WHERE p.oid = o.id)),
	  pg_current_wal_insert_lsn() - '0/0',
	  (SELECT sum(calls) FROM pg_stat_statements)"
}
# the cost of an operation, server-wide: WAL bytes and top-level statements
# (pg_stat_statements, which also counts BEGIN, COMMIT and every statement
# an executor runs for a task), the last two columns of a snapshot
per_op() { # BEFORE AFTER OPS
	local -a b a
	read -r -a b <<<"$1"
	read -r -a a <<<"$2"
	awk -v n="$3" -v w=$((a[15] - b[15])) -v s=$((a[16] - b[16])) 'BEGIN { printf "%.0f %.1f", w / n, s / n }'
}
# check OP SYSTEM OPS BEFORE AFTER: every delta as the operation implies
check() {
	local op=$1 sys=$2 n=$3 i d w bad=
	local -a b a
	local -A want=()
	read -r -a b <<<"$4"
	read -r -a a <<<"$5"
	case $op in
	checkout) want[0]=$n want[1]=$n ;;
	cart) want[4]=$n ;;
	reserve) want[5]=$n ;;
	post) want[7]=$n ;;
	follow) want[9]=any ;;
	increment) want[11]=$n ;;
	esac
	[ "$sys" = apiary ] && [[ $op == checkout || $op == timeline ]] && want[12]=$n
	for i in "${!names[@]}"; do
		d=$((a[i] - b[i]))
		w=${want[$i]:-0}
		if [ "$w" = any ]; then
			[ "$d" -ge 0 ] && [ "$d" -le "$n" ] || bad+=" ${names[$i]}: +$d for $n ops;"
		elif [ "$d" -ne "$w" ]; then
			bad+=" ${names[$i]}: +$d, expected +$w;"
		fi
	done
	for i in "${invariants[@]}"; do
		[ "${a[$i]}" -eq 0 ] || bad+=" ${names[$i]} = ${a[$i]}, expected 0;"
	done
	if [ -n "$bad" ]; then
		echo "ERROR: check failed after $sys $op ($n ops):$bad" >&2
		exit 1
	fi
}

# --- one run: prints and records "op system mode clients ops tput p50 p90 p99 retries" ---
: >"$dir/runs.tsv"
run() { # op system clients [rate]
	local op=$1 sys=$2 c=$3 r=${4:-0} before after line log="$dir/run.log" mode=closed warm=0 dbos_cost=
	[ "$r" != 0 ] && mode=open
	psql_ -c "VACUUM" >/dev/null
	before=$(snapshot)
	case $sys in
	apiary | interactive)
		local ropt=()
		[ "$r" != 0 ] && ropt=(-R "$r")
		if ! "$dir/driver" -d "host=127.0.0.1 port=$port user=postgres dbname=postgres" \
			-s "$sys" -w "$op" -c "$c" -T "$secs" -L "$rtt" "${ropt[@]}" "${params[@]}" >"$log" 2>&1; then
			cat "$log" >&2
			echo "ERROR: driver failed: $sys $op, $c client(s)" >&2
			exit 1
		fi
		line=$(tail -1 "$log")
		;;
	dbos)
		local ropt=()
		[ "$r" != 0 ] && ropt=(--rate "$r")
		if ! (cd "$here/dbos" && node bench.js --port "$port" --op "$op" --clients "$c" \
			--secs "$secs" --shop-users "${scale[shop_users]}" --counters "${scale[counters]}" \
			"${ropt[@]}") >"$log" 2>&1; then
			cat "$log" >&2
			echo "ERROR: DBOS driver failed: $op, $c client(s)" >&2
			exit 1
		fi
		line=$(grep '^ops=' "$log" | tail -1)
		# DBOS measures its own cost over the timed window (its launch and
		# warm-up are outside it); the check counts the warm-up's workflows
		warm=$(sed -n 's/^warmup=\([0-9]*\).*/\1/p' "$log")
		dbos_cost=$(sed -n 's/^warmup=[0-9]* wal=\([0-9.]*\) stmts=\([0-9.]*\)$/\1 \2/p' "$log")
		;;
	raw)
		local ropt=() lagcol=0
		[ "$r" != 0 ] && ropt=(-R "$r") && lagcol=7
		rm -f "$dir"/pgb.*
		if ! "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -M prepared \
			-c "$c" -j $((c < 2 ? c : 2)) -T "$secs" "${ropt[@]}" "${pgb_vars[@]}" \
			-l --log-prefix="$dir/pgb" -f "$dir/$op.sql" postgres >"$log" 2>&1 ||
			grep -q '^number of failed transactions: [1-9]' "$log"; then
			cat "$log" >&2
			echo "ERROR: pgbench failed: $op, $c client(s)" >&2
			exit 1
		fi
		local n tps
		n=$(awk '/^number of transactions actually processed:/ { print $6 }' "$log")
		tps=$(awk '/^tps = / { print $3 }' "$log")
		# per-transaction log: column 3 is the latency in us; with -R,
		# column 7 the schedule lag, which an open-loop latency includes
		line=$(cat "$dir"/pgb.* | awk -v lag="$lagcol" '{ print ($3 + (lag ? $lag : 0)) / 1000 }' | sort -g |
			awk -v n="$n" -v tps="$tps" -v secs="$secs" '{ v[NR] = $1 } END {
				p = "p50=" v[int(NR * 0.5 + 0.999999)] " p90=" v[int(NR * 0.9 + 0.999999)] " p99=" v[int(NR * 0.99 + 0.999999)]
				printf "ops=%d retries=0 elapsed=%s tput=%.1f %s\n", n, secs, tps, p }')
		;;
	esac
	[[ $line == ops=* ]] || { cat "$log" >&2; echo "ERROR: no result line from $sys $op" >&2; exit 1; }
	local n
	n=$(sed 's/.*ops=\([0-9]*\).*/\1/' <<<"$line")
	after=$(snapshot)
	check "$op" "$sys" $((n + warm)) "$before" "$after"
	local cost
	cost=${dbos_cost:-$(per_op "$before" "$after" "$n")}
	printf '  %-10s %-11s %-6s %3s  %s  wal/op=%s stmts/op=%s\n' "$op" "$sys" "$mode" "$c" "$line" $cost
	echo "$op $sys $mode $c $(sed 's/[a-z0-9]*=//g' <<<"$line") $cost" >>"$dir/runs.tsv"
}

# BENCH_PROFILE="OP SYSTEM CLIENTS": instead of the benchmark, one run of that
# point with perf recording the server's processes (not the client's) for
# its middle seconds; prints where the server's CPU time goes, by role
# (executor, client backend) and by function.
if [ -n "${BENCH_PROFILE:-}" ]; then
	read -r pop psys pc <<<"$BENCH_PROFILE"
	[ "$secs" -ge 4 ] || secs=6
	command -v perf >/dev/null || { echo "ERROR: perf is not installed" >&2; exit 1; }
	pm=$(head -1 "$dir/data/postmaster.pid")
	# times: the CPU the client side used (driver, node or pgbench, and psql)
	(run "$pop" "$psys" "$pc" && times >"$dir/client-times") &
	runner=$!
	sleep 1.5
	ps -o pid=,args= --ppid "$pm" >"$dir/roles"
	perf record -q -g -o "$dir/perf.data" -p "$(awk '{ print $1 }' "$dir/roles" | paste -sd,)" \
		-- sleep $((secs - 3)) 2>"$dir/perf.err" || { cat "$dir/perf.err" >&2; echo "ERROR: perf record failed" >&2; exit 1; }
	wait "$runner"
	prof=$results/paper-profile-$pop-$psys.txt
	mkdir -p "$results"
	{
		echo "perf, $pop on $psys at $pc client(s), the server's processes:"
		sed 's/^/  /' "$dir/roles"
		echo
		perf report -i "$dir/perf.data" --stdio -g none 2>/dev/null |
			awk -v t=$((secs - 3)) '/^# Event count/ { printf "server CPU: %.2f s in %d s of wall time (%.0f%% of one core)\n\n", $NF / 1e9, t, $NF / 1e9 / t * 100 }'
		awk -v t="$secs" 'NR == 2 { gsub(/[ms]/, " "); printf "client-side CPU over the whole run: %.2f s user + %.2f s system in about %d s\n\n", $1 * 60 + $2, $3 * 60 + $4, t }' "$dir/client-times"
		echo "share of the server's CPU samples by process role"
		perf report -i "$dir/perf.data" --no-children --sort pid -g none --stdio 2>/dev/null |
			awk 'NR == FNR { role[$1] = ($0 ~ /apiary executor/ ? "executor" : $0 ~ /apiary launcher/ ? "launcher" : ($0 ~ /127.0.0.1|local/ ? "client backend" : "other")); next }
				/%/ { split($2, a, ":"); r = role[a[1]]; if (r == "") r = "other"; share[r] += $1 }
				END { for (r in share) printf "  %-15s %6.1f%%\n", r, share[r] }' "$dir/roles" - | sort -k2 -rn
		for r in executor "client backend"; do
			pids=$(awk -v r="$r" '{ x = ($0 ~ /apiary executor/ ? "executor" : ($0 ~ /127.0.0.1|local/ ? "client backend" : "other")) } x == r { print $1 }' "$dir/roles" | paste -sd,)
			[ -n "$pids" ] || continue
			[ "$(perf report -i "$dir/perf.data" --pid="$pids" --stdio 2>/dev/null | grep -c '%')" -gt 0 ] || continue
			echo
			echo "top functions in the ${r}s (self time, share of their samples)"
			perf report -i "$dir/perf.data" --no-children --percentage relative --pid="$pids" --sort dso,sym -g none --stdio 2>/dev/null |
				awk '/%/ && n++ < 40'
		done
	} >"$prof"
	cat "$prof"
	echo "written to $prof"
	# BENCH_PERF_DATA=FILE keeps the recording, for perf report -g
	[ -z "${BENCH_PERF_DATA:-}" ] || { cp "$dir/perf.data" "$BENCH_PERF_DATA"; cp "$dir/roles" "$BENCH_PERF_DATA.roles"; }
	exit 0
fi

dbos_ops=" checkout increment "
echo "paper benchmark: ${#ops[@]} operations x ${#clients[@]} client counts x ${secs} s, systems: ${systems[*]}"
for op in "${ops[@]}"; do
	psql_ -c "CHECKPOINT" >/dev/null
	for c in "${clients[@]}"; do
		for sys in "${systems[@]}"; do
			[ "$sys" = dbos ] && [[ $dbos_ops != *" $op "* ]] && continue
			run "$op" "$sys" "$c"
		done
	done
done
if [ "$open_rate" != 0 ]; then
	echo "open loop: $open_rate arrivals/s, $open_clients connections"
	for op in checkout increment; do
		[[ " ${ops[*]} " == *" $op "* ]] || continue
		for sys in "${systems[@]}"; do run "$op" "$sys" "$open_clients" "$open_rate"; done
	done
fi

# --- report ------------------------------------------------------------------
mkdir -p "$results"
cp "$dir/runs.tsv" "$results/$name.tsv"
pgver=$(psql_ -c "SHOW server_version")
node_ver=$(node --version 2>/dev/null || echo none)
pkgver() { sed -n 's/^  "version": "\(.*\)",$/\1/p' "$here/dbos/node_modules/@dbos-inc/$1/package.json" 2>/dev/null; }
dbos_ver="$(pkgver dbos-sdk) with postgres-datasource $(pkgver postgres-datasource)"
BENCH_RATE=$open_rate node "$here/report.js" "$dir/runs.tsv" "$out" "$results/$name.png" \
	"$(date -u '+%Y-%m-%d %H:%M UTC'), PostgreSQL $pgver${BENCH_PG_BIN:+ (a separate installation, BENCH_PG_BIN)}, apiary $(psql_ -c "SELECT extversion FROM pg_extension WHERE extname = 'apiary'")$([ "${APIARY_NO_INSTALL:-}" = 1 ] && echo " as installed (APIARY_NO_INSTALL=1: not necessarily built from this checkout)"), nproc $(nproc), ${secs} s per run, fsync and synchronous_commit on, apiary.workers = $workers,$([ "$rtt" != 0 ] && echo " $rtt µs added to every round trip of apiary and the interactive baseline (not pgbench's or DBOS's),") node $node_ver, DBOS Transact $dbos_ver, commit $(git -C "$APIARY_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')."
echo
sed -n '/^## Ratios/,/^## All runs/p' "$out" | sed '$d'
echo "written to $out and $results/$name.png"
