#!/usr/bin/env bash
# Runs every test: installs missing system packages, makes the test certificates, builds
# with warnings as errors, then runs the suite in three phases: the in-process tests in
# parallel, then the integration tests (which start securemsg and openssl processes by the
# dozen), then the load suites (whose names end in LoadTests), so that neither the process
# start-ups nor the thousands of connections starve the timing-sensitive tests (heartbeats,
# backoff, rate limits) of CPU on a small machine. Extra arguments go to every `swift test` run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
scripts/gen-certs.sh >/dev/null
swift build --build-tests -Xswiftc -warnings-as-errors
swift test --skip-build --skip LoadTests --skip IntegrationTests "$@"
swift test --skip-build --filter IntegrationTests "$@"
swift test --skip-build --filter LoadTests "$@"
