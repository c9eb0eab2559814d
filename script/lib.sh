# Shared by script/demo, script/test and the script tests: installing what
# apiary needs, building it, and running throwaway PostgreSQL servers.
# Meant to be sourced.  Servers run as the postgres user when we are root
# (initdb refuses root); every server lives in a temp dir and is stopped on
# exit.

APIARY_ROOT=${APIARY_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
PG_MAJOR=${PG_MAJOR:-15}
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
# Build against that server too: the pg_config first on PATH is Debian's
# wrapper, which picks the newest postgresql-server-dev-* installed.
export PG_CONFIG=${PG_CONFIG:-$PG_BIN/pg_config}

apiary_packages=(
	"postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR" postgresql-contrib
	libcmocka-dev build-essential valgrind clang libclang-rt-dev
)

# Install whatever Debian packages are missing (needs root or sudo).
apiary_deps() {
	local missing=() p
	for p in "${apiary_packages[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	echo "installing: ${missing[*]}"
	local sudo=
	[ "$(id -u)" -ne 0 ] && sudo=sudo
	$sudo apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
		--no-install-recommends "${missing[@]}" >/dev/null
}

# Build and install the extension into the server's directories.
apiary_install() {
	local sudo=
	[ "$(id -u)" -ne 0 ] && sudo=sudo
	make -C "$APIARY_ROOT" -s -j2 >/dev/null
	$sudo make -C "$APIARY_ROOT" -s PG_CONFIG="$PG_CONFIG" install >/dev/null
}

# Run a command as the server's owner.
as_pg() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# A directory the server's owner can write.
pg_tmpdir() {
	local d
	d=$(mktemp -d "${TMPDIR:-/tmp}/apiary.XXXXXX")
	[ "$(id -u)" -eq 0 ] && chown postgres: "$d"
	chmod 755 "$d"
	echo "$d"
}

# pg_start DIR PORT [extra postgresql.conf lines...]
# initdb + start a server in DIR listening on PORT (loopback and a socket in
# DIR), with apiary preloaded.
pg_start() {
	local dir=$1 port=$2
	shift 2
	as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust --no-sync >/dev/null
	{
		echo "shared_preload_libraries = 'apiary'"
		echo "listen_addresses = '127.0.0.1'"
		echo "port = $port"
		echo "unix_socket_directories = '$dir'"
		echo "fsync = off"
		for line in "$@"; do
			# a setting of PostgreSQL builds that restrict output plugins
			case $line in output_plugin_libraries*) restricts_output_plugins || continue ;; esac
			echo "$line"
		done
	} | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
	as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

# Does this PostgreSQL build have output_plugin_libraries (a list of the
# output plugins logical slots may use)?  Stock PostgreSQL does not.
restricts_output_plugins() {
	"$PG_BIN/postgres" --describe-config 2>/dev/null | grep '^output_plugin_libraries' >/dev/null
}

pg_stop() {
	local dir=$1
	[ -f "$dir/data/postmaster.pid" ] &&
		as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1
	return 0
}

# psql against a throwaway server: pg_psql DIR PORT [psql args...]
pg_psql() {
	local dir=$1 port=$2
	shift 2
	"$PG_BIN/psql" -h "$dir" -p "$port" -U postgres -X -v ON_ERROR_STOP=1 "$@"
}

# throwaway_server PORT [extra postgresql.conf lines...]
# For script tests: a server in a new temp dir on PORT, stopped and removed
# when the script exits.  Sets $dir and $port; psql_ runs quiet, unaligned
# psql in its postgres database.
throwaway_server() {
	port=$1
	shift
	dir=$(pg_tmpdir)
	trap 'pg_stop "$dir"; rm -rf "$dir"' EXIT
	pg_start "$dir" "$port" "$@"
}
psql_() { pg_psql "$dir" "$port" -d postgres -qAt "$@"; }

# wait_sql SQL [TENTHS], for script tests: until SQL (through psql_) returns
# t, for at most TENTHS tenths of a second (default 600); false if it never
# did.
wait_sql() {
	for _ in $(seq 1 "${2:-600}"); do
		[ "$(psql_ -c "$1")" = t ] && return 0
		sleep 0.1
	done
	return 1
}

# check LABEL SQL, for script tests: SQL returns offending rows, and none is
# a pass.  Prints up to 10 of them under LABEL and counts a problem in
# $problems (which the caller sets to 0 first and tests at the end).
check() {
	local out
	out=$(psql_ -F ' | ' -c "$2" 2>&1) || { echo "  $1: query failed: $out"; problems=$((problems + 1)); return; }
	if [ -n "$out" ]; then
		echo "  $1:"
		echo "$out" | head -n 10 | sed 's/^/    /'
		[ "$(echo "$out" | wc -l)" -gt 10 ] && echo "    ... ($(echo "$out" | wc -l) rows)"
		problems=$((problems + 1))
	fi
}
