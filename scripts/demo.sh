#!/usr/bin/env bash
# Runs the main job: installs missing system packages, makes certificates if needed, and
# runs `securemsg demo` over mutual TLS on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
scripts/gen-certs.sh >/dev/null
# Same flags as scripts/test.sh, so that one build serves both.
swift build --product securemsg -Xswiftc -warnings-as-errors
"$(swift build --show-bin-path)/securemsg" demo --certs certs "$@"
