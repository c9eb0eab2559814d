#!/usr/bin/env bash
# Fuzz the pure C binding rules and name suggestions (src/bindrules.c,
# src/names.c) with the libFuzzer target in test/fuzz, for FUZZ_SECONDS
# seconds (default 30).  Fails on any crash, sanitizer report or invariant
# violation, and prints the reproducer, which stays in a temporary directory
# (replay it with test/fuzz/fuzz_bind FILE).  For a longer run:
#   FUZZ_SECONDS=600 bash test/scripts/fuzz.sh
set -euo pipefail
. "$(dirname "$0")/../../script/lib.sh"

seconds=${FUZZ_SECONDS:-30}
fuzz=$APIARY_ROOT/test/fuzz

command -v clang >/dev/null ||
	{ echo "FAIL: clang not found (Debian: apt-get install clang libclang-rt-dev)"; exit 1; }
if ! build=$(make -s -C "$fuzz" 2>&1); then
	echo "$build"
	echo "FAIL: could not build the fuzz target"
	exit 1
fi

# the inputs the run finds, its log and any reproducer: never in the tree
work=$(mktemp -d "${TMPDIR:-/tmp}/apiary-fuzz.XXXXXX")
mkdir "$work/corpus"
rc=0
"$fuzz/fuzz_bind" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
	-artifact_prefix="$work/" "$work/corpus" "$fuzz/corpus" >"$work/log" 2>&1 || rc=$?

runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log")
speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log")
reproducer=$(sed -n 's/.*Test unit written to //p' "$work/log" | head -n 1)
if [ "$rc" -ne 0 ] || [ -n "$reproducer" ] || [ -z "$runs" ]; then
	grep -v -E '^(#[0-9]+|INFO:|MS:|base unit:|0x|\\)' "$work/log" | tail -n 40
	echo "log: $work/log ($(grep -m1 -o 'Seed: [0-9]*' "$work/log" || echo 'no seed'))"
	[ -n "$reproducer" ] && echo "replay: $fuzz/fuzz_bind $reproducer"
	echo "FAIL: the fuzz target failed (exit $rc); reproducer: ${reproducer:-none written}"
	exit 1
fi
inputs=$(ls "$work/corpus" | wc -l)
rm -rf "$work"
echo "fuzzed bind rules and name suggestions for ${seconds}s: $runs executions ($speed/s), $inputs new inputs, no failure"
