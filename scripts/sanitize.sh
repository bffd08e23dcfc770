#!/usr/bin/env bash
# Runs tests under a sanitizer, in a build directory of its own.
# Usage: scripts/sanitize.sh thread|address [swift test filter] (default filter: the
# SecureTransport and Messaging suites, without the load suites).
# TSan reports fail the run (halt_on_error; scripts/tsan.supp lists the suppressed false
# positives and why); ASan stops at the first error anyway. The tests run one at a time: the
# sanitizers slow everything 5–15 times, and in parallel on 2 cores the tests' timeouts
# (heartbeats, "within 1 s") would fail for that reason alone.
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
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/scripts/tsan.supp ${TSAN_OPTIONS:-}"
export ASAN_OPTIONS="detect_leaks=0 ${ASAN_OPTIONS:-}"
swift test --skip-build --build-path "$build" --no-parallel --filter "$filter" --skip LoadTests
