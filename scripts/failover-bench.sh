#!/usr/bin/env bash
# Failover time on one machine: etcd on loopback, two leaders (--lease-ttl 2), and one swarm
# process of N collaborators following the election, each sending an acknowledged message
# every 500 ms. The active leader is SIGKILLed; the time is from the kill to every collaborator
# having a session with the new leader (its term in their HELLO), as the swarm sees it; on the
# way, when the new leader printed "elected", and when the first and half of the collaborators
# were on its term.
# Afterwards the swarm reports the acknowledged sends, those that failed, and those still
# unacknowledged when it stopped (in flight, not lost: they are kept until ACKed).
#
# Usage: scripts/failover-bench.sh [N ...]   (default: 200 2000)
# Env: CONFIG=release|debug (default release), ROUNDS=1, LEASE_TTL=2, SETTLE=3 (seconds of
#      steady sending before the kill and after the takeover)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
CONFIG=${CONFIG:-release}
ROUNDS=${ROUNDS:-1}
LEASE_TTL=${LEASE_TTL:-2}
SETTLE=${SETTLE:-3}
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(200 2000)
max=0
for n in "${counts[@]}"; do [ "$n" -gt "$max" ] && max=$n; done
scripts/gen-certs.sh >/dev/null
scripts/gen-soak-certs.sh "$max" >/dev/null
swift build -c "$CONFIG" --product securemsg >/dev/null
swift build -c "$CONFIG" --product smsg-soak >/dev/null
bin="$(swift build -c "$CONFIG" --show-bin-path)/securemsg"
soak_bin="$(swift build -c "$CONFIG" --show-bin-path)/smsg-soak"
need=$((4 * max + 512))
if [ "$(ulimit -n)" -lt "$need" ]; then ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)"; fi

. scripts/lib-ha.sh
work=$(mktemp -d "${TMPDIR:-/tmp}/smsg-failover.XXXXXX")
pids=()
cleanup() {
  status=$?
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    rm -rf "${TMPDIR:-/tmp}/smsg-failover-failed"
    mv "$work" "${TMPDIR:-/tmp}/smsg-failover-failed"
    echo "logs kept in ${TMPDIR:-/tmp}/smsg-failover-failed" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

printf '%-14s %-6s %-11s %-9s %-8s %-12s %-8s %-7s %-10s\n' collaborators round elected_ms first_ms half_ms failover_ms \
  acked failed unacked_at_stop
for n in "${counts[@]}"; do
  for round in $(seq "$ROUNDS"); do
    run="$work/$n-$round"
    mkdir -p "$run"
    pids=()
    start_etcd "$run/etcd" "$run/etcd.log"
    election=(--etcd "$ETCD_URL" --election bench --lease-ttl "$LEASE_TTL")
    for name in a b; do
      "$bin" leader --listen 127.0.0.1:0 --cert certs/leader.pem --key certs/leader.key --ca certs/ca.pem \
        --require-client-cert "${election[@]}" >"$run/leader-$name.log" 2>&1 &
      pids+=($!)
      wait_for "$run/leader-$name.log" "listening on"
    done
    leader_a=${pids[1]}
    leader_b=${pids[2]}
    # The swarm's stdin is a pipe this script holds open; closing it stops the swarm.
    mkfifo "$run/stdin"
    "$soak_bin" failover-swarm --etcd "$ETCD_URL" --election bench --count "$n" --certs certs \
      --collaborator-certs .build/soak-certs <"$run/stdin" >"$run/swarm.log" 2>&1 &
    pids+=($!)
    swarm=$!
    exec 7>"$run/stdin"
    wait_for "$run/swarm.log" "all $n on term" 300
    sleep "$SETTLE"
    # Lines read "WHAT on term T at MS"; startup may already have seen more than one term, so
    # the term before the kill is the one all were on last, read just before the kill.
    first=$(awk '/^all [0-9]+ on term / {for (i = 1; i < NF; i++) if ($i == "term") t = $(i + 1)} END {print t}' \
      "$run/swarm.log")
    if grep -q "elected term=$first\$" "$run/leader-a.log"; then
      active=$leader_a standby=b
    else
      active=$leader_b standby=a
    fi
    killed=$(now_ms)
    { kill -9 "$active" && wait "$active"; } 2>/dev/null || true
    deadline=$((SECONDS + 300))
    elected=""
    # The first line of WHAT for a term above the one before the kill: its time.
    at() {
      awk -v what="$1 on term " -v first="$first" \
        'index($0, what) == 1 && t == "" {for (i = 1; i < NF; i++) if ($i == "term" && $(i + 1) + 0 > first + 0) t = $NF}
         END {print t}' "$run/swarm.log"
    }
    # Whether the standby leader has printed "elected term=N" with N above the one before the kill.
    elected_after() {
      sed -n 's/^.*elected term=\([0-9][0-9]*\).*$/\1/p' "$run/leader-$standby.log" |
        awk -v first="$first" '$1 + 0 > first + 0 {found = 1} END {exit !found}'
    }
    until [ -n "$(at "all $n")" ]; do
      [ "$SECONDS" -lt "$deadline" ] || { echo "no takeover within 300 s" >&2; tail "$run/swarm.log" >&2; exit 1; }
      if [ -z "$elected" ] && elected_after; then elected=$(now_ms); fi
      sleep 0.05
    done
    [ -n "$elected" ] || elected=$(now_ms)
    joined=$(at "all $n")
    first_on=$(at first)
    half_on=$(at half)
    sleep "$SETTLE"
    exec 7>&-
    wait "$swarm" || true
    if ! grep -q "^acked " "$run/swarm.log"; then
      echo "the swarm stopped without its counts" >&2
      tail "$run/swarm.log" >&2
      exit 1
    fi
    unacked=$(awk '/^unacked at stop/ {print $4; exit}' "$run/swarm.log")
    read -r _ acked _ failed < <(grep -m1 "^acked " "$run/swarm.log")
    printf '%-14s %-6s %-11s %-9s %-8s %-12s %-8s %-7s %-10s\n' "$n" "$round" "$((elected - killed))" \
      "$((first_on - killed))" "$((half_on - killed))" "$((joined - killed))" "$acked" "$failed" "$unacked"
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
  done
done
