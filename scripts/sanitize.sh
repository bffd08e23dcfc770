#!/usr/bin/env bash
# Runs tests under a sanitizer, in a build directory of its own.
# Usage: scripts/sanitize.sh thread|address [swift test filter] (default filter: the
# SecureTransport and Messaging suites, without the load suites).
# TSan reports fail the run (halt_on_error); ASan stops at the first error anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
sanitizer=${1:-thread}
filter=${2:-"SecureTransportTests|MessagingTests"}
case "$sanitizer" in
    thread | address) ;;
    *) echo "usage: scripts/sanitize.sh thread|address [filter]" >&2; exit 2 ;;
esac
scripts/ensure-deps.sh
scripts/gen-certs.sh >/dev/null
build=.build-$sanitizer
swift build --build-tests --build-path "$build" -Xswiftc -sanitize="$sanitizer"
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
export ASAN_OPTIONS="detect_leaks=0 ${ASAN_OPTIONS:-}"
swift test --skip-build --build-path "$build" --filter "$filter" --skip LoadTests
