#!/usr/bin/env bash
# The leader-failover demo: etcd (Debian's etcd-server) on loopback, two leaders campaigning in
# one election, three collaborators following it over mutual TLS. The active leader is killed
# (SIGKILL); the other is elected with a higher term and all three collaborators rejoin it.
# Exits non-zero if that does not happen within 30 s. Logs stay in $SMSG_DEMO_LOGS if set.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
scripts/gen-certs.sh >/dev/null
swift build --product securemsg -Xswiftc -warnings-as-errors
bin="$(swift build --show-bin-path)/securemsg"

work=$(mktemp -d "${TMPDIR:-/tmp}/smsg-ha-demo.XXXXXX")
logs=${SMSG_DEMO_LOGS:-$work}
mkdir -p "$logs"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

. scripts/lib-ha.sh
start_etcd "$work/etcd" "$logs/etcd.log"
echo "etcd on $ETCD_URL"

election=(--etcd "$ETCD_URL" --election demo --lease-ttl 2)
leader() {
  "$bin" leader --listen 127.0.0.1:0 --cert certs/leader.pem --key certs/leader.key --ca certs/ca.pem \
    --require-client-cert "${election[@]}" >"$logs/$1.log" 2>&1 &
  pids+=($!)
}

leader leader-a
wait_for "$logs/leader-a.log" "elected term="
leader_a=${pids[-1]}
leader leader-b
leader_b=${pids[-1]}
wait_for "$logs/leader-b.log" "standby"
echo "leader-a: $(grep -m1 'elected term=' "$logs/leader-a.log"); leader-b: standby"

for n in 1 2 3; do
  "$bin" collaborator --id "collab-$n" --cert "certs/collab-$n.pem" --key "certs/collab-$n.key" --ca certs/ca.pem \
    --status ready "${election[@]}" >"$logs/collab-$n.log" 2>&1 &
  pids+=($!)
done
for n in 1 2 3; do wait_for "$logs/leader-a.log" "joined collab-$n"; done
echo "collab-1, collab-2, collab-3 joined leader-a"

echo "killing leader-a (SIGKILL)"
killed=$(now_ms)
{ kill -9 "$leader_a" && wait "$leader_a"; } 2>/dev/null || true
wait_for "$logs/leader-b.log" "elected term="
for n in 1 2 3; do wait_for "$logs/leader-b.log" "joined collab-$n"; done
took=$(($(now_ms) - killed))
term_a=$(grep -m1 'elected term=' "$logs/leader-a.log" | sed 's/.*term=//')
term_b=$(grep -m1 'elected term=' "$logs/leader-b.log" | sed 's/.*term=//')
[ "$term_b" -gt "$term_a" ] || { echo "demo-ha: term $term_b is not above $term_a" >&2; exit 1; }
echo "leader-b: elected term=$term_b (leader-a had term=$term_a); collab-1, collab-2, collab-3 rejoined, ${took} ms after the kill"

# The collaborators leave gracefully, then the leader stops.
for pid in "${pids[@]:3}"; do kill -TERM "$pid" 2>/dev/null || true; done
for n in 1 2 3; do wait_for "$logs/leader-b.log" "left collab-$n (goodbye)"; done
kill -TERM "$leader_b"
wait "$leader_b"
echo "demo-ha: done"
