#!/usr/bin/env bash
# Runs every test: installs missing system packages, makes the test certificates, builds
# with warnings as errors, then runs the suite. Extra arguments go to `swift test`
# (for example `--filter TLSHandlerTests`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
scripts/gen-certs.sh >/dev/null
swift build --build-tests -Xswiftc -warnings-as-errors
swift test --skip-build "$@"
