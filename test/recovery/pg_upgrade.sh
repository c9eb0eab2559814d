#!/usr/bin/env bash
# pg_upgrade carries apiary over: a cluster with registrations, a pending
# workflow and keyed calls is upgraded with pg_upgrade into a new cluster
# (same major version: what matters is that function OIDs change), and
# there the launcher resolves every registration's signature again (and a
# worker of its in another database with apiary installed), each names
# the same function, the workflow runs to its result, and a keyed
# call returns its recorded output without running again.
#
# Before the upgrade, OIDs are used up in the old cluster so that the
# functions get other OIDs in the new one, and the registered functions,
# a schema and a table whose row type a function takes are renamed, so
# the signatures the registry holds must have followed them.
set -euo pipefail
. "$(dirname "$0")/../../script/lib.sh"

old_port=${PORT:-55486}
new_port=$((old_port + 1))
throwaway_server "$old_port" "apiary.workers = 0"
new=$(pg_tmpdir)
trap 'pg_stop "$dir"; pg_stop "$new"; rm -rf "$dir" "$new"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
new_psql() { pg_psql "$new" "$new_port" -d postgres -qAt "$@"; }
registry() { # psql function
	"$1" -c "SELECT name, fn, fn::regprocedure::oid, kind, max_attempts, timeout, declared
	         FROM apiary.functions ORDER BY name"
}

# functions created and dropped, whose OIDs the new cluster does not use up
burn_oids() { # database
	pg_psql "$dir" "$old_port" -d "$1" -qAt >/dev/null -c "DO \$\$ BEGIN FOR i IN 1..200 LOOP
	    EXECUTE format('CREATE FUNCTION burn%s() RETURNS int LANGUAGE sql AS ''SELECT 1''', i);
	    EXECUTE format('DROP FUNCTION burn%s()', i);
	END LOOP; END \$\$"
}

burn_oids postgres
psql_ >/dev/null <<'SQL'
CREATE EXTENSION apiary;
CREATE ROLE clerk;
CREATE SCHEMA shop AUTHORIZATION clerk;
CREATE SCHEMA lib AUTHORIZATION clerk;
SET ROLE clerk;
CREATE TABLE lib.item (item int, qty int);
CREATE TABLE shop.stock (item int PRIMARY KEY, qty int NOT NULL);
INSERT INTO shop.stock VALUES (1, 10), (2, 20);
CREATE TABLE shop.counter (n int NOT NULL);
INSERT INTO shop.counter VALUES (0);

-- declared, taking a table's row type
CREATE FUNCTION lib.worth(s lib.item) RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT s.qty * 3 $$;
-- registered with settings, under another name
CREATE FUNCTION shop.bump_counter(by int) RETURNS int LANGUAGE sql
AS $$ UPDATE shop.counter SET n = n + by RETURNING n $$;
SELECT apiary_register('shop.bump_counter(int)', 'transactional', name => 'bump',
                       max_attempts => 7, timeout => '5 s');
-- a workflow: the root queues a child and returns its future
CREATE FUNCTION shop.restock(item int, qty int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
    UPDATE shop.stock SET qty = stock.qty + restock.qty WHERE stock.item = restock.item
    RETURNING stock.qty $$;
CREATE FUNCTION shop.reorder(item int) RETURNS jsonb LANGUAGE sql
SET apiary.kind = 'transactional' AS $$
    SELECT apiary_queue('restock', jsonb_build_object('item', item, 'qty', 5)) $$;

-- renames the registry must follow
ALTER FUNCTION shop.bump_counter(int) RENAME TO bump_count;
ALTER TABLE lib.item RENAME TO article;
RESET ROLE;
ALTER SCHEMA lib RENAME TO goods;
SET ROLE clerk;

SELECT apiary_invoke('bump', '{"by": 1}', key => 'first');
SELECT apiary_start('reorder', '{"item": 2}', key => 'reorder-2');
RESET ROLE;
CREATE DATABASE elsewhere;
SQL
# a database with apiary but no launcher
burn_oids elsewhere
pg_psql "$dir" "$old_port" -d elsewhere -qAt >/dev/null <<'SQL'
CREATE EXTENSION apiary;
CREATE FUNCTION triple(x int) RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT x * 3 $$;
SQL

before=$(registry psql_)
[ "$(echo "$before" | wc -l)" -eq 4 ] || fail "expected 4 registrations before the upgrade: $before"
echo "$before" | grep -q '^worth|goods.worth(goods.article)|' ||
	fail "the registry did not follow the renames: $before"
[ "$(psql_ -c "SELECT state FROM apiary.tasks ORDER BY id")" = "pending" ] ||
	fail "the workflow should be pending before the upgrade"

# the new cluster, initialised and configured as the old one, then upgraded
as_pg "$PG_BIN/initdb" -D "$new/data" -U postgres -A trust --no-sync >/dev/null
{
	echo "shared_preload_libraries = 'apiary'"
	echo "listen_addresses = '127.0.0.1'"
	echo "port = $new_port"
	echo "unix_socket_directories = '$new'"
	echo "fsync = off"
	echo "apiary.workers = 2"
} | as_pg tee -a "$new/data/postgresql.conf" >/dev/null
pg_stop "$dir"
if ! as_pg bash -c "cd '$new' && '$PG_BIN/pg_upgrade' -b '$PG_BIN' -B '$PG_BIN' \
		-d '$dir/data' -D '$new/data' -p $old_port -P $new_port -s '$new' -U postgres" \
		>"$new/upgrade.log" 2>&1; then
	cat "$new/upgrade.log"
	find "$new/data" -path '*pg_upgrade_output.d*' -name '*.txt' -exec sh -c 'echo "--- $1"; cat "$1"' _ {} \;
	fail "pg_upgrade failed"
fi
as_pg "$PG_BIN/pg_ctl" -D "$new/data" -l "$new/server.log" -w -t 60 start >/dev/null

after=$(registry new_psql)
# same names, signatures and settings; other OIDs
strip_oid() { cut -d'|' -f1,2,4-; }
[ "$(echo "$after" | strip_oid)" = "$(echo "$before" | strip_oid)" ] ||
	fail "registrations differ after the upgrade: before
$before
after
$after"
moved=$(join -t'|' <(echo "$before" | cut -d'|' -f1,3) <(echo "$after" | cut -d'|' -f1,3) |
	awk -F'|' '$2 != $3' | wc -l)
[ "$moved" -gt 0 ] || fail "no registered function changed OID: the test shows nothing"

# the launcher resolves the registrations in the new cluster
adopted=f
for _ in $(seq 300); do
	adopted=$(new_psql -c "SELECT (SELECT system_identifier FROM apiary.registry_cluster) = apiary.system_identifier()
	                       AND NOT EXISTS (SELECT FROM apiary.functions WHERE fn_oid IS DISTINCT FROM fn::regprocedure)")
	[ "$adopted" = t ] && break
	sleep 0.1
done
[ "$adopted" = t ] || fail "the launcher did not resolve the registrations in the new cluster"
# and, just after the upgrade, in the other databases (a worker in each)
adopted=f
for _ in $(seq 300); do
	adopted=$(pg_psql "$new" "$new_port" -d elsewhere -qAt -c "SELECT (SELECT system_identifier FROM apiary.registry_cluster) = apiary.system_identifier()
	          AND NOT EXISTS (SELECT FROM apiary.functions WHERE fn_oid IS DISTINCT FROM fn::regprocedure)")
	[ "$adopted" = t ] && break
	sleep 0.1
done
[ "$adopted" = t ] || fail "the registrations of a database without a launcher were not resolved"
out=$(pg_psql "$new" "$new_port" -d elsewhere -qAt -c "SELECT apiary_invoke('triple', '5')")
[ "$out" = "15" ] || fail "triple returned $out, not 15"

# the pending workflow runs in the new cluster
result=$(new_psql -c "SET ROLE clerk; SELECT apiary_result('reorder-2', '60 s')")
[ "$result" = "25" ] || fail "the workflow's result is $result, not 25"

# a keyed call is not run again; an unkeyed one runs the renamed function
out=$(new_psql -c "SET ROLE clerk; SELECT apiary_invoke('bump', '{\"by\": 1}', key => 'first')")
[ "$out" = "1" ] || fail "the keyed call returned $out, not its recorded 1"
out=$(new_psql -c "SET ROLE clerk; SELECT apiary_invoke('bump', '{\"by\": 10}')")
[ "$out" = "11" ] || fail "bump returned $out, not 11"
out=$(new_psql -c "SET ROLE clerk; SELECT apiary_invoke('worth', '{\"s\": {\"item\": 1, \"qty\": 4}}')")
[ "$out" = "12" ] || fail "worth returned $out, not 12"

# and the registry goes on following its functions
new_psql >/dev/null <<'SQL'
SET ROLE clerk;
DROP FUNCTION goods.worth(goods.article);
ALTER FUNCTION shop.restock(int, int) RENAME TO refill;
CREATE FUNCTION shop.price(item int) RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT item * 2 $$;
SQL
names=$(new_psql -c "SELECT string_agg(name || '=' || fn, ' ' ORDER BY name) FROM apiary.functions")
[ "$names" = "bump=shop.bump_count(integer) price=shop.price(integer) reorder=shop.reorder(integer) restock=shop.refill(integer,integer)" ] ||
	fail "registry after drop, rename and create: $names"

echo "pg_upgrade kept 4 registrations (OIDs changed for $moved), resolved them also in a database without a launcher, ran the pending workflow and kept the keyed call"
