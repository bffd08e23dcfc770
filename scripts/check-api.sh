#!/usr/bin/env bash
# Checks the shape of the public API and of the libraries' dependencies:
# - every time in the public API of the libraries is a Swift Duration, never NIO's TimeAmount
#   (read from the symbol graphs the compiler emits: public declarations only);
# - the Messaging library links swift-metrics only for metrics: no Prometheus, no HTTP server
#   (those are in the MetricsEndpoint library).
set -euo pipefail
cd "$(dirname "$0")/.."
libraries=(SecureTransport Messaging Cluster EtcdElection SecureMessagingTesting)
status=0

graphs=$(swift build --show-bin-path)/../symbolgraph
rm -rf "$graphs"
# The package's test modules can make the tool fail after the libraries' graphs are written;
# each library's graph must then be there, fresh.
swift package dump-symbol-graph --minimum-access-level public >/dev/null 2>&1 || true
for library in "${libraries[@]}"; do
    graph="$graphs/$library.symbols.json"
    if [ ! -s "$graph" ]; then
        echo "check-api: no symbol graph for $library" >&2
        status=1
        continue
    fi
    uses=$(python3 - "$graph" <<'PY'
import json, sys
graph = json.load(open(sys.argv[1]))
for symbol in graph["symbols"]:
    fragments = symbol.get("declarationFragments", [])
    if any(f.get("spelling") == "TimeAmount" for f in fragments):
        print("  " + ".".join(symbol["pathComponents"]) + ": " + "".join(f["spelling"] for f in fragments))
PY
)
    if [ -n "$uses" ]; then
        echo "check-api: $library has TimeAmount in its public API (use Duration):" >&2
        echo "$uses" >&2
        status=1
    else
        echo "check-api: $library's public API takes Duration only"
    fi
done

linked=$(swift package describe --type json 2>/dev/null | python3 -c '
import json, sys
for target in json.load(sys.stdin)["targets"]:
    if target["name"] == "Messaging":
        print(" ".join(target.get("product_dependencies", [])))
')
for forbidden in Prometheus NIOHTTP1; do
    if [[ " $linked " == *" $forbidden "* ]]; then
        echo "check-api: the Messaging library depends on $forbidden" >&2
        status=1
    fi
done
[ $status -eq 0 ] && echo "check-api: Messaging depends on: $linked"
exit $status
