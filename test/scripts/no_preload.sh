#!/usr/bin/env bash
# Without shared_preload_libraries, registration (also declarative, in a
# session that never loaded the library) and apiary_invoke still work, and
# apiary_start says how to enable the workers.  The worker settings a
# postgresql.conf keeps draw no warning in the sessions that load apiary.
set -euo pipefail
. "$(dirname "$0")/../../script/lib.sh"

throwaway_server "${PORT:-55472}" "shared_preload_libraries = ''" "apiary.workers = 2" "apiary.database = 'postgres'"

psql_ -c "CREATE EXTENSION apiary"
# a fresh session: the library is loaded only when the event trigger fires
psql_ -c "CREATE FUNCTION twice(x int) RETURNS int LANGUAGE sql SET apiary.kind = 'readonly' AS \$\$ SELECT 2 * x \$\$"
registered=$(psql_ -c "SELECT kind FROM apiary.functions WHERE name = 'twice'")
[ "$registered" = readonly ] || { echo "FAIL: declarative registration missed ($registered)"; exit 1; }
out=$(psql_ -c "SELECT apiary_invoke('twice', '21', 'k')" -c "SELECT apiary_invoke('twice', '21', 'k')" 2>&1)
[ "$out" = $'42\n42' ] || { echo "FAIL: invoke returned '$out'"; exit 1; }
# workflows need the workers: a clear error, with the way to enable them
err=$(psql_ -c "SELECT apiary_start('twice', '1')" 2>&1 || true)
echo "$err" | grep -q "requires apiary's background workers" ||
	{ echo "FAIL: apiary_start without preloading said: $err"; exit 1; }
psql_ -c "DROP FUNCTION twice(int)"
left=$(psql_ -c "SELECT count(*) FROM apiary.functions")
[ "$left" -eq 0 ] || { echo "FAIL: registration survived DROP FUNCTION"; exit 1; }
echo "ok: works without preloading"
