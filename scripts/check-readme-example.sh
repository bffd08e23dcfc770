#!/usr/bin/env bash
# The documented examples must be exactly the example programs CI compiles and runs: the
# README's messaging example is Examples/smsg-example/Example.swift, and the cluster example
# in the README and in the Cluster DocC catalogue is Examples/cluster-example/Example.swift, and
# the README's test is Tests/UserTests/ReadmeExample.swift, as SecureMessagingTesting's overview
# test is Tests/UserTests/DocCExample.swift. scripts/check-doc-snippets.py checks the fragments.
# This keeps the documented API honest.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
check() {
    local document=$1 marker=$2 program=$3 extracted
    extracted=$(awk "/<!-- $marker:begin -->/{flag=1; next} /<!-- $marker:end -->/{flag=0} flag" "$document" | sed '1d;$d')
    if [ -z "$extracted" ]; then
        echo "$document has no $marker block" >&2
        status=1
    elif ! diff <(printf '%s\n' "$extracted") "$program"; then
        echo "$document's $marker differs from $program (diff above)" >&2
        status=1
    else
        echo "$document's $marker matches $program"
    fi
}
check README.md example Examples/smsg-example/Example.swift
check README.md cluster-example Examples/cluster-example/Example.swift
check README.md user-test Tests/UserTests/ReadmeExample.swift
check Sources/SecureMessagingTesting/Docs.docc/index.md testing-example Tests/UserTests/DocCExample.swift
check Sources/Cluster/Docs.docc/LeaderAndCollaborators.md cluster-example Examples/cluster-example/Example.swift
python3 scripts/check-doc-snippets.py || status=1
exit $status
