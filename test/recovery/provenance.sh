#!/usr/bin/env bash
# Provenance survives a crash between commit and decoding: with
# apiary.provenance = writes, 200 workflows each write rows (an insert, an
# update, a delete).  The first 100 are collected; then the collector is
# stopped (SIGSTOP), the other 100 commit, and the postmaster and all its
# processes are killed with kill -9.  After the restart every write appears
# in apiary.provenance exactly once (the slot kept the WAL; rows decoded
# again are kept once), and writes made outside apiary do not appear.
# Before that, two launcher restarts leave one collector running.
# Then the caps on what the collector holds of one transaction, rows no
# role may use to stop or stall the collector, a row it
# cannot convert, a collector that fails, a slot that lost its WAL, and a
# move of apiary.database to another database.
set -euo pipefail
. "$(dirname "$0")/../../script/lib.sh"

N=200
port=${PORT:-55466}
while (: </dev/tcp/127.0.0.1/"$port") 2>/dev/null; do port=$((port + 1)); done
throwaway_server "$port" "wal_level = logical" "output_plugin_libraries = 'apiary'" \
	"apiary.provenance = writes" "apiary.workers = 2"
fail() { echo "FAIL: $*"; tail -n 30 "$dir/server.log"; exit 1; }

psql_ <<'SQL'
CREATE EXTENSION apiary;
CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL);
INSERT INTO items SELECT g, 0 FROM generate_series(1, 1000) g;
CREATE FUNCTION touch(k int) RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  INSERT INTO items VALUES (10000 + k, k);
  UPDATE items SET n = n + 1 WHERE id = k;
  DELETE FROM items WHERE id = 500 + k;
  RETURN k;
END $$;
SQL
wait_sql "SELECT state = 'recording' FROM apiary.provenance_status" 100 ||
	fail "provenance is '$(psql_ -c "SELECT state FROM apiary.provenance_status")', not recording"

# a launcher started again (terminated here; after an error too) finds
# the collector running, and starts no second one
for _ in 1 2; do
	launcher=$(psql_ -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'apiary launcher'")
	psql_ -c "SELECT pg_terminate_backend($launcher)" >/dev/null
	wait_sql "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'apiary launcher' AND pid <> $launcher" 150 ||
		fail "the launcher did not start again"
done
sleep 2
collectors=$(psql_ -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apiary provenance'")
[ "$collectors" -eq 1 ] || fail "$collectors provenance collectors after two launcher restarts"

# the workflows, and writes outside apiary in between
run_workflows() { # from to
	for k in $(seq "$1" "$2"); do
		echo "SELECT apiary_start('touch', '{\"k\": $k}', 'w$k');"
		echo "UPDATE items SET n = n + 1000 WHERE id = 999;"
	done | psql_ >/dev/null
	wait_sql "SELECT NOT EXISTS (SELECT FROM apiary.workflows WHERE state = 'running')" ||
		fail "$(psql_ -c "SELECT count(*) FROM apiary.workflows WHERE state = 'running'") workflows still running"
}
# the first half is collected before the crash (the slot's position on
# disk may still be older: decoded again after the restart, kept once) ...
half=$((N / 2))
run_workflows 1 "$half"
wait_sql "SELECT count(*) >= $((half * 3)) FROM apiary.provenance" || true
before=$(psql_ -c "SELECT count(*) FROM apiary.provenance")
[ "$before" -eq $((half * 3)) ] || fail "expected $((half * 3)) provenance rows before the crash, found $before"
# ... the second half commits while the collector is stopped, so the crash
# falls between their commits and their decoding
collector=$(psql_ -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'apiary provenance'")
[ -n "$collector" ] || fail "no provenance collector running"
kill -STOP "$collector"
run_workflows $((half + 1)) "$N"
[ "$(psql_ -c "SELECT count(*) FROM apiary.provenance")" -eq "$before" ] || fail "rows decoded while the collector was stopped"

# apiary's workers run as the bootstrap superuser: a search_path that the
# database's owner sets (here an operator of its own on name, first in the
# path) must not reach the SQL they run when they start again
psql_ >/dev/null <<'SQL'
CREATE SCHEMA evil;
CREATE TABLE evil.calls (who text, backend text);
GRANT USAGE ON SCHEMA evil TO PUBLIC;
GRANT INSERT ON evil.calls TO PUBLIC;
CREATE FUNCTION evil.name_eq(name, name) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO evil.calls SELECT current_user, backend_type FROM pg_catalog.pg_stat_activity
  WHERE pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid();
  RETURN $1 OPERATOR(pg_catalog.=) $2;
END $$;
CREATE OPERATOR evil.= (leftarg = name, rightarg = name, function = evil.name_eq);
ALTER DATABASE postgres SET search_path = evil, pg_catalog, public;
SQL

# kill -9 the postmaster and all of its children at once, then restart
pid=$(head -n 1 "$dir/data/postmaster.pid")
children=$(pgrep -P "$pid" || true)
kill -9 "$pid" $children 2>/dev/null || true
for _ in $(seq 1 200); do
	alive=0
	for p in $pid $children; do kill -0 "$p" 2>/dev/null && alive=1; done
	[ $alive -eq 0 ] && break
	sleep 0.05
done
as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null 2>&1 ||
	fail "could not restart the server"

want=$((N * 3))
# deletes of ids 501..700 remove rows that exist: every workflow writes 3 rows
wait_sql "SELECT count(*) >= $want FROM apiary.provenance" || true
got=$(psql_ -c "SELECT count(*) FROM apiary.provenance")
[ "$got" -eq "$want" ] || fail "expected $want provenance rows, found $got"
evil=$(psql_ -c "SELECT string_agg(DISTINCT backend, ', ') FROM evil.calls WHERE backend LIKE 'apiary%'")
[ -z "$evil" ] || fail "the database's search_path reached apiary's workers: an operator of its own ran in $evil"
psql_ -c "ALTER DATABASE postgres RESET search_path" -c "DROP SCHEMA evil CASCADE" >/dev/null 2>&1
dups=$(psql_ -c "SELECT count(*) FROM (SELECT task, relname, operation, \"row\" FROM apiary.provenance
	GROUP BY 1, 2, 3, 4 HAVING count(*) > 1) d")
[ "$dups" -eq 0 ] || fail "$dups provenance rows recorded twice"
per=$(psql_ -c "SELECT count(DISTINCT workflow) FROM apiary.provenance
	WHERE function = 'touch' AND relname = 'public.items'")
[ "$per" -eq "$N" ] || fail "rows of $per workflows, not $N"
ops=$(psql_ -c "SELECT string_agg(operation || '=' || c, ',' ORDER BY operation)
	FROM (SELECT operation, count(*) c FROM apiary.provenance GROUP BY 1) x")
[ "$ops" = "delete=$N,insert=$N,update=$N" ] || fail "operations: $ops"
outside=$(psql_ -c "SELECT count(*) FROM apiary.provenance WHERE \"row\"->>'id' = '999'")
[ "$outside" -eq 0 ] || fail "writes made outside apiary were attributed to it"

# the collector holds at most 100,000 changes of one transaction: a client's
# bulk load is nobody's (none recorded), an apiary function that writes
# more has the first 100,000 recorded and a warning logged
psql_ >/dev/null <<'SQL'
CREATE TABLE bulk (id int);
CREATE FUNCTION fill(n int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ INSERT INTO bulk SELECT generate_series(1, n) RETURNING 1 $$;
INSERT INTO bulk SELECT generate_series(1, 120000);
SELECT count(*) FROM (SELECT apiary_invoke('fill', '100010')) x;
SQL
wait_sql "SELECT count(*) >= 100000 FROM apiary.provenance WHERE relname = 'public.bulk'" || true
sleep 0.5
bulk=$(psql_ -c "SELECT count(*) FILTER (WHERE function = 'fill') || ' ' || count(*) FROM apiary.provenance WHERE relname = 'public.bulk'")
[ "$bulk" = "100000 100000" ] || fail "bulk writes: expected 100000 of fill and none else, found (fill, all) $bulk"
grep -q "wrote and read more than 100000 rows; the other 10 are not recorded" "$dir/server.log" || fail "no warning for the rows left out"

# a value that its type cannot show (an extension's type whose output
# function fails, from the example module) leaves its row without an image,
# where the error stopped the collector, to fail again at every restart;
# and a transaction's images past 64 MB are left out, so that no
# transaction fills the collector's memory.  Each is logged, and the
# writes after them are recorded.
make -s -C "$APIARY_ROOT/test/c_example" >/dev/null 2>&1
make -s -C "$APIARY_ROOT/test/c_example" install >/dev/null 2>&1
psql_ >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE TYPE fragile;
CREATE FUNCTION fragile_in(cstring) RETURNS fragile
AS 'apiary_example', 'example_fragile_in' LANGUAGE C STRICT IMMUTABLE;
CREATE FUNCTION fragile_out(fragile) RETURNS cstring
AS 'apiary_example', 'example_fragile_out' LANGUAGE C STRICT IMMUTABLE;
CREATE TYPE fragile (input = fragile_in, output = fragile_out, internallength = variable);
CREATE TABLE odd (id int, f fragile, t text);
CREATE FUNCTION put_odd(first int, n int, f text, kb int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  INSERT INTO odd SELECT g, f::fragile, repeat(chr(65 + g % 26), kb * 1024)
  FROM generate_series(first, first + n - 1) g RETURNING 1 $$;
SELECT count(*) FROM (SELECT apiary_invoke('put_odd', '[1, 2, "fragile", 0]')) x;
SELECT count(*) FROM (SELECT apiary_invoke('put_odd', '[101, 80, "sturdy", 900]')) x;
SELECT count(*) FROM (SELECT apiary_invoke('put_odd', '[201, 1, "after", 1]')) x;
SQL
wait_sql "SELECT count(*) >= 83 FROM apiary.provenance WHERE relname = 'public.odd'" || true
odd=$(psql_ -c "SELECT count(*) FROM apiary.provenance WHERE relname = 'public.odd'")
[ "$odd" -eq 83 ] || fail "expected 83 provenance rows of odd, found $odd"
# the three transactions, in the order they ran
odd_txn() { echo "WITH t AS (SELECT \"row\", dense_rank() OVER (ORDER BY xid) AS k FROM apiary.provenance
	WHERE relname = 'public.odd') SELECT $2 FROM t WHERE k = $1"; }
fragile=$(psql_ -c "$(odd_txn 1 "count(*) FILTER (WHERE \"row\" IS NULL) || ' ' || count(*)")")
[ "$fragile" = "2 2" ] || fail "rows of the fragile type: (without image, all) $fragile, not 2 2"
grep -q 'has 2 rows recorded without their values, which could not be converted' "$dir/server.log" ||
	fail "no warning for the rows that could not be converted"
grep -q 'example_fragile cannot show "fragile" (a row of odd)' "$dir/server.log" ||
	fail "the warning does not name the conversion's error"
# 80 images of 0.9 MB: the first 72 fit in 64 MB
big=$(psql_ -c "$(odd_txn 2 "count(*) FILTER (WHERE \"row\" IS NULL) || ' ' ||
	count(*) FILTER (WHERE length(\"row\"->>'t') = 921600)")")
[ "$big" = "8 72" ] || fail "a transaction of 80 rows of 0.9 MB: (without image, with) $big, not 8 72"
grep -q 'has 8 rows recorded without some or all of their values' "$dir/server.log" ||
	fail "no warning for the images left out"
after=$(psql_ -c "SELECT \"row\"->>'f' FROM apiary.provenance WHERE relname = 'public.odd' AND \"row\"->>'id' = '201'")
[ "$after" = after ] || fail "the write after them was not recorded with its image: '$after'"
state=$(psql_ -c "SELECT state FROM apiary.provenance_status")
[ "$state" = recording ] || fail "provenance is '$state', not recording"

# no role's row stops or stalls the collector: a jsonb value nested too
# deep to parse again (written by a client, and by an apiary function,
# whose row is recorded without it), a table an apiary function creates,
# writes and drops in one call (recorded without an image), and a write
# decoded while another session holds its table locked (rows are converted
# without locking their tables)
psql_ >/dev/null <<'SQL'
CREATE TABLE deep (id int, j jsonb);
INSERT INTO deep SELECT 1, (repeat('[', 14400) || repeat(']', 14400))::jsonb;
CREATE FUNCTION put_deep() RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
  INSERT INTO deep SELECT 2, (repeat('[', 14400) || repeat(']', 14400))::jsonb RETURNING 1 $$;
SELECT apiary_invoke('put_deep');
CREATE FUNCTION stage() RETURNS int LANGUAGE plpgsql
SET apiary.kind = 'transactional' AS $$
BEGIN
  CREATE TABLE staged (id int);
  INSERT INTO staged VALUES (1);
  DROP TABLE staged;
  RETURN 1;
END $$;
SELECT apiary_invoke('stage');
CREATE TABLE held (id int);
CREATE FUNCTION put_held() RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ INSERT INTO held VALUES (1) RETURNING 1 $$;
SQL
collector=$(psql_ -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'apiary provenance'")
[ -n "$collector" ] || fail "no provenance collector running"
kill -STOP "$collector"
psql_ -c "SELECT apiary_invoke('put_held')" >/dev/null
psql_ -c "BEGIN" -c "LOCK TABLE held IN ACCESS EXCLUSIVE MODE" -c "SELECT pg_sleep(60)" >/dev/null 2>&1 &
locker=$!
wait_sql "SELECT count(*) = 1 FROM pg_locks WHERE relation = 'held'::regclass AND granted" 100 ||
	fail "the lock on held was not taken"
psql_ -c "SELECT apiary_invoke('put_odd', '[301, 1, \"while held\", 0]')" >/dev/null
kill -CONT "$collector"
recorded=t
wait_sql "SELECT count(*) = 1 FROM apiary.provenance WHERE relname = 'public.odd' AND \"row\"->>'id' = '301'" 100 ||
	recorded=f
psql_ -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()" >/dev/null
wait "$locker" 2>/dev/null || true
[ $recorded = t ] || fail "the collector stalled on a row of a table another session held locked"
held=$(psql_ -c "SELECT count(\"row\") FROM apiary.provenance WHERE relname = 'public.held'")
[ "$held" -eq 1 ] || fail "the write to the locked table: $held rows with an image, not 1"
deep=$(psql_ -c "SELECT count(*) || ' ' || count(*) FILTER (WHERE \"row\"->>'id' = '2' AND \"row\"->'j' = 'null') FROM apiary.provenance WHERE relname = 'public.deep'")
[ "$deep" = "1 1" ] || fail "rows of deep: (recorded, by put_deep without j) $deep, not 1 1"
staged=$(psql_ -c "SELECT count(*) || ' ' || count(\"row\") FROM apiary.provenance WHERE relname = 'public.staged'")
[ "$staged" = "1 0" ] || fail "rows of the dropped table: (recorded, with image) $staged, not 1 0"
state=$(psql_ -c "SELECT state FROM apiary.provenance_status")
[ "$state" = recording ] || fail "provenance is '$state' after deep, dropped and locked tables, not recording"

# a collector that fails (here on a row a DBA's constraint refuses) is
# started again and decodes the same WAL again: provenance_status says it
# is failing, not recording, and is recording again once it got past
psql_ >/dev/null <<'SQL'
ALTER TABLE apiary.provenance_rows ADD CONSTRAINT no_poison CHECK (relname <> 'public.poison');
CREATE TABLE poison (id int);
CREATE FUNCTION put_poison() RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ INSERT INTO poison VALUES (1) RETURNING 1 $$;
SELECT apiary_invoke('put_poison');
SQL
wait_sql "SELECT failed_at IS NOT NULL FROM apiary.provenance_status" 300 || true
state=$(psql_ -c "SELECT state FROM apiary.provenance_status")
case "$state" in
"failing since "*": see the server log") ;;
*) fail "provenance_status says '$state' while the collector fails" ;;
esac
grep -q 'violates check constraint "no_poison"' "$dir/server.log" || fail "no error of the collector's in the log"
psql_ -c "ALTER TABLE apiary.provenance_rows DROP CONSTRAINT no_poison" >/dev/null
wait_sql "SELECT state = 'recording' AND failed_at IS NULL FROM apiary.provenance_status" 300 ||
	fail "provenance_status says '$(psql_ -c "SELECT state FROM apiary.provenance_status")' after the collector got past its failure"
[ "$(psql_ -c "SELECT count(*) FROM apiary.provenance WHERE relname = 'public.poison'")" -eq 1 ] ||
	fail "the write the collector failed on was not recorded once it got past"

# a collector kept behind until the server removed the WAL its slot had not
# decoded (max_slot_wal_keep_size) starts over with a new slot, and says
# what it could not record; the writes after that are recorded
psql_ >/dev/null <<'SQL'
ALTER SYSTEM SET max_slot_wal_keep_size = '1MB';
SELECT pg_reload_conf();
ALTER TABLE apiary.provenance_rows ADD CONSTRAINT no_poison CHECK (relname <> 'public.poison') NOT VALID;
SELECT apiary_invoke('put_poison');
CREATE TABLE wal_filler (id int);
SQL
wait_sql "SELECT failed_at IS NOT NULL FROM apiary.provenance_status" 300 || true
for _ in $(seq 1 20); do
	psql_ -c "INSERT INTO wal_filler VALUES (1)" -c "SELECT pg_switch_wal()" -c "CHECKPOINT" >/dev/null
	[ "$(psql_ -c "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'apiary_provenance'")" = lost ] && break
done
[ "$(psql_ -c "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'apiary_provenance'")" = lost ] ||
	fail "the slot did not lose its WAL"
psql_ -c "ALTER TABLE apiary.provenance_rows DROP CONSTRAINT no_poison" >/dev/null
wait_sql "SELECT state = 'recording' AND failed_at IS NULL FROM apiary.provenance_status" 300 ||
	fail "provenance_status says '$(psql_ -c "SELECT state FROM apiary.provenance_status")' after the slot lost its WAL"
grep -q 'replication slot "apiary_provenance" has lost the WAL it had not decoded' "$dir/server.log" ||
	fail "no warning for the writes not recorded"
psql_ -c "SELECT apiary_invoke('put_poison')" >/dev/null
wait_sql "SELECT count(*) = 2 FROM apiary.provenance WHERE relname = 'public.poison'" 100 ||
	fail "$(psql_ -c "SELECT count(*) FROM apiary.provenance WHERE relname = 'public.poison'") writes of poison recorded, not 2 (one before, one after the lost WAL)"
psql_ -c "ALTER SYSTEM RESET max_slot_wal_keep_size" -c "SELECT pg_reload_conf()" >/dev/null

# apiary.database moved to another database: the slot left in the old one
# would hold WAL forever, and made the new one's collector fail; it is
# dropped, and each database's provenance_status tells the truth
psql_ -c "CREATE DATABASE moved" >/dev/null
pg_psql "$dir" "$port" -d moved -qAt -c "CREATE EXTENSION apiary" >/dev/null
psql_ -c "ALTER SYSTEM SET apiary.database = 'moved'" >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 restart >/dev/null
for _ in $(seq 1 100); do
	state=$(pg_psql "$dir" "$port" -d moved -qAt -c "SELECT state FROM apiary.provenance_status")
	[ "$state" = recording ] && break
	sleep 0.1
done
[ "$state" = recording ] || fail "provenance in the new apiary.database is '$state', not recording"
slots=$(psql_ -c "SELECT string_agg(database, ',') FROM pg_replication_slots WHERE slot_name = 'apiary_provenance'")
[ "$slots" = moved ] || fail "apiary_provenance slots in databases: '$slots', not just moved"
old=$(psql_ -c "SELECT state FROM apiary.provenance_status")
[ "$old" = "not recording: apiary.database is moved" ] || fail "the old database's provenance_status says '$old'"
echo "ok: $want writes of $N workflows in apiary.provenance exactly once across a kill -9 ($before decoded before it, $((want - before)) after), a transaction of 100,010 writes capped, rows that cannot be converted and images past 64 MB recorded without them, a failing collector shown as failing, a slot that lost its WAL replaced, and the slot moved with apiary.database"
