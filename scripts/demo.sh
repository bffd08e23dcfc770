#!/usr/bin/env bash
# Runs the main job: installs missing system packages, makes certificates if needed, and
# runs `securemsg demo` over mutual TLS on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
scripts/gen-certs.sh >/dev/null
swift build --product securemsg
"$(swift build --show-bin-path)/securemsg" demo --certs certs "$@"
