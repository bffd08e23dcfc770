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
# Optimized, as the library runs in production, with assertions kept (-assert-config Debug):
# the debug build spent its time in unspecialized NIO generics and ran about 170 inputs/s;
# this one runs about 2,500 (scripts/fuzz.sh 30 on 2 shared cores, seed corpus included).
swift build -c release --product smsg-fuzz --build-path "$build" \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -DFUZZING \
    -Xswiftc -enable-testing -Xswiftc -assert-config -Xswiftc Debug >&2
mkdir -p "$build/corpus" Fuzz/crashes
"$build/release/smsg-fuzz" -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix=Fuzz/crashes/ \
    -max_len=70000 "$@" "$build/corpus" Fuzz/corpus
