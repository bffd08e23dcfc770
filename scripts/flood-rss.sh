#!/usr/bin/env bash
# The flow-control benchmark: one client pushes BYTES (default 1 GiB) at a server whose
# application consumes slowly; reports the server's peak RSS, sampled every 50 ms, next to
# the configured bounds. Usage: scripts/flood-rss.sh [--plaintext] [BYTES] [DELAY_US]
set -euo pipefail
cd "$(dirname "$0")/.."
mode=tls
if [ "${1:-}" = "--plaintext" ]; then mode=plain; shift; fi
bytes=${1:-1073741824}
delay_us=${2:-200}
scripts/ensure-deps.sh
scripts/gen-certs.sh >/dev/null
swift build -c release --product securemsg >&2
bin="$(swift build -c release --show-bin-path)/securemsg"
out=$(mktemp)
if [ "$mode" = plain ]; then
    tls_server=(--plaintext); tls_client=(--plaintext)
else
    tls_server=(--cert certs/server.pem --key certs/server.key); tls_client=(--ca certs/ca.pem)
fi
"$bin" bench server --listen 127.0.0.1:0 "${tls_server[@]}" --sink --consume-delay-us "$delay_us" >"$out" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.05; done
port=$(sed -n 's/^listening on 127.0.0.1:\([0-9]*\)$/\1/p' "$out")
rss() { awk '/^VmRSS/ {print $2}' "/proc/$server/status"; }
before=$(rss)
peak=$before
"$bin" bench push --connect "127.0.0.1:$port" "${tls_client[@]}" --bytes "$bytes" --size 65536 >"$out.client" &
client=$!
while kill -0 "$client" 2>/dev/null; do
    now=$(rss); [ "$now" -gt "$peak" ] && peak=$now
    sleep 0.05
done
wait "$client"
cat "$out.client"; rm -f "$out.client"
echo "server RSS: before ${before} KiB, peak ${peak} KiB, growth $((peak - before)) KiB"
echo "bounds per session: inbound hard limit 2048 messages or 32 MiB of payload; outbound write buffer 1 MiB"
