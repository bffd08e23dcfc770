#!/usr/bin/env bash
# Runs the main job: installs missing system packages and runs `securemsg demo` over mutual
# TLS on 127.0.0.1 (the demo makes its own certificate authority and certificates, in a
# temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
# Same flags as scripts/test.sh, so that one build serves both.
swift build --product securemsg -Xswiftc -warnings-as-errors
"$(swift build --show-bin-path)/securemsg" demo "$@"
