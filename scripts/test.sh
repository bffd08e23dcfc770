#!/usr/bin/env bash
# Runs every test: installs missing system packages, makes the test certificates, builds
# with warnings as errors, then runs the suite in two phases: everything but the load
# suites (whose names end in LoadTests) in parallel, then the load suites, so that their
# thousands of connections do not starve the timing-sensitive tests (heartbeats, rate
# limits) of CPU on a small machine. Extra arguments go to both `swift test` runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
scripts/gen-certs.sh >/dev/null
swift build --build-tests -Xswiftc -warnings-as-errors
swift test --skip-build --skip LoadTests "$@"
swift test --skip-build --filter LoadTests "$@"
