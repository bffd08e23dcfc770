#!/usr/bin/env bash
# The README's messaging example must be exactly Examples/smsg-example/Example.swift, which
# CI compiles and runs: this keeps the documented API honest.
set -euo pipefail
cd "$(dirname "$0")/.."
extracted=$(awk '/<!-- example:begin -->/{flag=1; next} /<!-- example:end -->/{flag=0} flag' README.md | sed '1d;$d')
if ! diff <(printf '%s\n' "$extracted") Examples/smsg-example/Example.swift; then
    echo "README.md's example differs from Examples/smsg-example/Example.swift (diff above)" >&2
    exit 1
fi
echo "README example matches Examples/smsg-example/Example.swift"
