#!/usr/bin/env bash
# Fuzzes the production session path (frame assembler, state machine and the real session
# handler on an EmbeddedChannel) with libFuzzer (and ASan) for
# SECONDS (default 60), starting from Fuzz/corpus. New interesting inputs are kept in
# .build-fuzz/corpus; a crash input is written to Fuzz/crashes/ (add it to Fuzz/corpus once
# fixed: the replay test runs everything there). Prints libFuzzer's execution count.
# Usage: scripts/fuzz.sh [SECONDS] [extra libFuzzer flags]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
scripts/ensure-deps.sh
build=.build-fuzz
swift build --product smsg-fuzz --build-path "$build" \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -DFUZZING >&2
mkdir -p "$build/corpus" Fuzz/crashes
"$build/debug/smsg-fuzz" -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix=Fuzz/crashes/ \
    -max_len=70000 "$@" "$build/corpus" Fuzz/corpus
