#!/usr/bin/env bash
# Keyed calls raced by 8 clients: every key's function runs exactly once.
#
# 8 pgbench clients call apiary_invoke with keys drawn from a small set, so
# most calls collide with another client's call of the same key, committed
# or still in flight.  Afterwards each key must have executed once: one row
# in executions per key, and one journal row per key.
set -euo pipefail
. "$(dirname "$0")/../../script/lib.sh"

throwaway_server "${PORT:-55471}"

psql_ <<'SQL'
CREATE EXTENSION apiary;
CREATE TABLE executions (key int NOT NULL, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION exec_once(k int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  INSERT INTO executions (key) VALUES (k) RETURNING k * 10
$$;
SQL

cat > "$dir/race.sql" <<'SQL'
\set k random(1, 150)
SELECT apiary_invoke('exec_once', jsonb_build_object('k', :k), 'key-' || :k);
SQL
"$PG_BIN/pgbench" -h "$dir" -p "$port" -U postgres -n -c 8 -j 2 -t 300 \
	-f "$dir/race.sql" postgres >"$dir/pgbench.log" 2>&1 || {
	cat "$dir/pgbench.log"
	echo "FAIL: pgbench reported errors"
	exit 1
}

calls=$(grep -oE 'number of transactions actually processed: [0-9]+' "$dir/pgbench.log" | grep -oE '[0-9]+$')
dups=$(psql_ -c "SELECT count(*) FROM (SELECT key FROM executions GROUP BY key HAVING count(*) > 1) d")
keys=$(psql_ -c "SELECT count(DISTINCT key) FROM executions")
execs=$(psql_ -c "SELECT count(*) FROM executions")
journal=$(psql_ -c "SELECT count(*) FROM apiary.invocations WHERE function = 'exec_once'")
wrong=$(psql_ -c "SELECT count(*) FROM apiary.invocations WHERE output::int <> substr(key, 5)::int * 10")

echo "calls=$calls executions=$execs distinct_keys=$keys journal_rows=$journal duplicated_keys=$dups wrong_outputs=$wrong"
[ "$calls" -eq 2400 ] || { echo "FAIL: expected 2400 calls"; exit 1; }
[ "$dups" -eq 0 ] || { echo "FAIL: some keys executed more than once"; exit 1; }
[ "$execs" -eq "$keys" ] && [ "$journal" -eq "$keys" ] || { echo "FAIL: executions and journal disagree"; exit 1; }
[ "$wrong" -eq 0 ] || { echo "FAIL: recorded outputs do not match"; exit 1; }
echo "ok: every key ran exactly once"
