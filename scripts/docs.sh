#!/usr/bin/env bash
# Builds the DocC documentation of every public module with warnings as errors (a broken
# symbol link or an undocumented parameter in a documented list fails). Archives land in
# .build/plugins/Swift-DocC/outputs/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
for target in SecureTransport Messaging Cluster EtcdElection SecureMessagingTesting; do
    echo "== docs: $target"
    swift package --disable-sandbox generate-documentation --target "$target" --warnings-as-errors
done
