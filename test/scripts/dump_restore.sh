#!/usr/bin/env bash
# pg_dump keeps registrations: a database dumped with pg_dump and restored
# into a new one with psql has the same apiary.functions, with no error.
#
# The restore creates the functions before it copies the table, and a
# function with SET apiary.kind registers itself when it is created; its
# copied row then takes the place of that registration, with the settings
# given to apiary_register kept.  Registered three ways: declared only,
# with apiary_register only (under another name), and declared then given
# max_attempts and timeout with apiary_register.
set -euo pipefail
. "$(dirname "$0")/../../script/lib.sh"

throwaway_server "${PORT:-55482}" "apiary.workers = 1"
fail() { echo "FAIL: $*"; exit 1; }
registry() { # database
	pg_psql "$dir" "$port" -d "$1" -qAt -c \
		"SELECT name, fn::text, kind, max_attempts, timeout, declared, registered_by
		 FROM apiary.functions ORDER BY name"
}

psql_ >/dev/null <<'SQL'
CREATE EXTENSION apiary;
CREATE ROLE shopkeeper;
CREATE SCHEMA shop AUTHORIZATION shopkeeper;
SET ROLE shopkeeper;
CREATE FUNCTION shop.price(item int) RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT item * 10 $$;
CREATE FUNCTION shop.notify(item int) RETURNS text LANGUAGE sql
AS $$ SELECT 'notified ' || item $$;
SELECT apiary_register('shop.notify(int)', 'external', name => 'notify_buyer', max_attempts => 5);
CREATE FUNCTION shop.charge(item int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT item $$;
SELECT apiary_register('shop.charge(int)', 'transactional', max_attempts => 4, timeout => '3 s');
RESET ROLE;
CREATE DATABASE restored;
SQL

before=$(registry postgres)
[ "$(echo "$before" | wc -l)" -eq 3 ] || fail "expected 3 registrations before the dump: $before"

"$PG_BIN/pg_dump" -h "$dir" -p "$port" -U postgres postgres >"$dir/dump.sql"
pg_psql "$dir" "$port" -d restored -q -f "$dir/dump.sql" >"$dir/restore.log" 2>&1 ||
	{ cat "$dir/restore.log"; fail "the restore failed"; }
if grep -E "ERROR|WARNING" "$dir/restore.log"; then fail "the restore reported the above"; fi

after=$(registry restored)
[ "$after" = "$before" ] || fail "registrations differ after the restore:
before:
$before
after:
$after"

# and the restored registrations are the ones the restored database calls
out=$(pg_psql "$dir" "$port" -d restored -qAt -c "SELECT apiary_invoke('notify_buyer', '7')")
[ "$out" = '"notified 7"' ] || fail "apiary_invoke after the restore gave $out"
echo "ok: 3 registrations (declared, registered, both) kept by pg_dump and restore"
