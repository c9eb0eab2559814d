#!/usr/bin/env bash
# pg_dump keeps registrations: a database dumped with pg_dump and restored
# into a new one with psql has the same apiary.functions, with no error.
#
# The restore creates the functions before it copies the table, and a
# function with SET apiary.kind registers itself when it is created; its
# copied row then takes the place of that registration, with the settings
# given to apiary_register kept.  Registered three ways: declared only,
# with apiary_register only (under another name), and declared then given
# max_attempts and timeout with apiary_register.  And two registrations a
# restore's own declarations would get wrong: a declared function
# unregistered, whose name another function was then registered under; and
# a declared function renamed (its registration keeps the old name) after
# which a function of its new name was declared in another schema, so
# that, restored in either order, one of the two finds its name taken.
# Then a dump made with 0.9, whose registry named functions by
# regprocedure, restored into the current version.
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
CREATE SCHEMA post AUTHORIZATION shopkeeper;
SET ROLE shopkeeper;
CREATE FUNCTION shop.price(item int) RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT item * 10 $$;
CREATE FUNCTION shop.notify(item int) RETURNS text LANGUAGE sql
AS $$ SELECT 'notified ' || item $$;
SELECT apiary_register('shop.notify(int)', 'external', name => 'notify_buyer', max_attempts => 5);
CREATE FUNCTION shop.charge(item int) RETURNS int LANGUAGE sql
SET apiary.kind = 'transactional' AS $$ SELECT item $$;
SELECT apiary_register('shop.charge(int)', 'transactional', max_attempts => 4, timeout => '3 s');
CREATE FUNCTION shop.quote(item int) RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT item $$;
SELECT apiary_unregister('quote');
CREATE FUNCTION shop.quote_v2(item int) RETURNS int LANGUAGE sql AS $$ SELECT item * 2 $$;
SELECT apiary_register('shop.quote_v2(int)', 'readonly', name => 'quote');
CREATE FUNCTION shop.ship(item int) RETURNS int LANGUAGE sql
SET apiary.kind = 'external' AS $$ SELECT item $$;
ALTER FUNCTION shop.ship(int) RENAME TO send;
CREATE FUNCTION post.send(item int) RETURNS int LANGUAGE sql
SET apiary.kind = 'external' AS $$ SELECT -item $$;
RESET ROLE;
CREATE DATABASE restored;
SQL

before=$(registry postgres)
[ "$(echo "$before" | wc -l)" -eq 6 ] || fail "expected 6 registrations before the dump: $before"

"$PG_BIN/pg_dump" -h "$dir" -p "$port" -U postgres postgres >"$dir/dump.sql"
pg_psql "$dir" "$port" -d restored -q -f "$dir/dump.sql" >"$dir/restore.log" 2>&1 ||
	{ cat "$dir/restore.log"; fail "the restore failed"; }
if grep -E "ERROR" "$dir/restore.log"; then fail "the restore reported the above"; fi
# every function is there (a declaration that cannot register is a warning)
functions() {
	pg_psql "$dir" "$port" -d "$1" -qAt -c \
		"SELECT oid::regprocedure::text FROM pg_proc WHERE pronamespace IN ('shop'::regnamespace, 'post'::regnamespace) ORDER BY 1"
}
[ "$(functions restored)" = "$(functions postgres)" ] || fail "functions differ after the restore: $(functions restored)"

after=$(registry restored)
[ "$after" = "$before" ] || fail "registrations differ after the restore:
before:
$before
after:
$after"

# and the restored registrations are the ones the restored database calls
out=$(pg_psql "$dir" "$port" -d restored -qAt -c "SELECT apiary_invoke('notify_buyer', '7')")
[ "$out" = '"notified 7"' ] || fail "apiary_invoke after the restore gave $out"
out=$(pg_psql "$dir" "$port" -d restored -qAt -c "SELECT apiary_invoke('quote', '7'), apiary_invoke('send', '7'), apiary_invoke('ship', '7')")
[ "$out" = '14|-7|7' ] || fail "calls after the restore gave $out, not 14|-7|7"

# A dump made with 0.9, which named functions by regprocedure, restores
# into the current version, which names them by signature.
psql_ >/dev/null <<'SQL'
CREATE DATABASE old_version;
CREATE DATABASE from_old_version;
SQL
pg_psql "$dir" "$port" -d old_version -q >/dev/null <<'SQL'
CREATE EXTENSION apiary VERSION '0.9';
CREATE SCHEMA shop;
CREATE FUNCTION shop.price(item int) RETURNS int LANGUAGE sql
SET apiary.kind = 'readonly' AS $$ SELECT item * 10 $$;
CREATE FUNCTION shop.note(t text) RETURNS text LANGUAGE sql AS $$ SELECT t $$;
SELECT apiary_register('shop.note(text)', 'external', name => 'noted', max_attempts => 5);
SQL
"$PG_BIN/pg_dump" -h "$dir" -p "$port" -U postgres old_version >"$dir/old.sql"
grep -q 'shop.note(text)' "$dir/old.sql" || fail "the 0.9 dump does not name shop.note(text)"
pg_psql "$dir" "$port" -d from_old_version -q -f "$dir/old.sql" >"$dir/restore_old.log" 2>&1 ||
	{ cat "$dir/restore_old.log"; fail "the restore of the 0.9 dump failed"; }
out=$(pg_psql "$dir" "$port" -d from_old_version -qAt -c \
	"SELECT string_agg(name || '=' || fn || ':' || kind || ':' || coalesce(max_attempts, 0), ' ' ORDER BY name) FROM apiary.functions")
[ "$out" = "noted=shop.note(pg_catalog.text):external:5 price=shop.price(integer):readonly:0" ] ||
	fail "registrations restored from the 0.9 dump: $out"
out=$(pg_psql "$dir" "$port" -d from_old_version -qAt -c "SELECT apiary_invoke('noted', '\"x\"')")
[ "$out" = '"x"' ] || fail "apiary_invoke after restoring the 0.9 dump gave $out"

echo "ok: 6 registrations (declared, registered, both, a name reused, a function renamed) kept by pg_dump and restore, and a dump of 0.9 restored"
