#!/usr/bin/env bash
# Dispatch on one machine, real processes over mutual TLS: a leader (`securemsg bench
# dispatch`) hands requests to 8 collaborators (`securemsg collaborator --serve work:MS`),
# each to whichever has the most room; the same workloads go through a NATS queue group
# (Debian's nats-server with TLS, nats-py clients) as the anchor. Workloads:
#
#   even  8 identical collaborators answering after EVEN_MS (default FAST_MS), EVEN_REQUESTS
#         requests: the share of the busiest over the least busy (max/min);
#   slow  8 collaborators answering after FAST_MS, then the same with one of them 10 times
#         slower: p50/p99 of each run;
#   kill  8 collaborators answering after FAST_MS; one is SIGKILLed after a quarter of
#         KILL_REQUESTS: requests lost when marked idempotent (must be 0), and, not marked,
#         how many failed and how they were reported. NATS has no retry: its lost requests
#         are those in flight to the killed member (they time out).
#
# Usage: scripts/dispatch-bench.sh
# Env: CONFIG=release|debug (default release), EVEN_REQUESTS=100000, SLOW_REQUESTS=50000,
#      KILL_REQUESTS=20000, CONCURRENCY=64, FAST_MS=2, EVEN_MS=FAST_MS, NATS=1 (0 skips the
#      anchor)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-release}
EVEN_REQUESTS=${EVEN_REQUESTS:-100000}
SLOW_REQUESTS=${SLOW_REQUESTS:-50000}
KILL_REQUESTS=${KILL_REQUESTS:-20000}
CONCURRENCY=${CONCURRENCY:-64}
FAST_MS=${FAST_MS:-2}
EVEN_MS=${EVEN_MS:-$FAST_MS}
NATS=${NATS:-1}
SLOW_MS=$((FAST_MS * 10))
COLLABORATORS=8

scripts/gen-certs.sh >/dev/null
scripts/gen-soak-certs.sh $((COLLABORATORS + 1)) >/dev/null
certs=.build/soak-certs
swift build -c "$CONFIG" --product securemsg >/dev/null
bin="$(swift build -c "$CONFIG" --show-bin-path)/securemsg"
if [ "$NATS" = 1 ]; then
  command -v nats-server >/dev/null || scripts/apt-install.sh nats-server
  venv=.build/nats-venv
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -c "import nats" 2>/dev/null || "$venv/bin/pip" install -q "nats-py==2.16.0"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/smsg-dispatch.XXXXXX")
pids=()
cleanup() {
  status=$?
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    rm -rf "${TMPDIR:-/tmp}/smsg-dispatch-failed"
    mv "$work" "${TMPDIR:-/tmp}/smsg-dispatch-failed"
    echo "logs kept in ${TMPDIR:-/tmp}/smsg-dispatch-failed" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}

# smsg NAME REQUESTS COSTS… [-- DRIVER FLAGS…]: collaborators soak-1… with those costs, then
# the driver; its JSON line goes to $work/NAME.json. With KILL=N the driver SIGKILLs soak-N.
smsg() {
  local name=$1 requests=$2
  shift 2
  local costs=() flags=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do costs+=("$1"); shift; done
  if [ $# -gt 0 ]; then shift; fi
  flags=("$@")
  local port
  port=$(free_port)
  local n=0 victim=""
  for cost in "${costs[@]}"; do
    n=$((n + 1))
    "$bin" collaborator --leader "127.0.0.1:$port" --id "soak-$n" --cert "$certs/soak-$n.pem" \
      --key "$certs/key.pem" --ca certs/ca.pem --server-name localhost --serve "work:$cost" \
      --log-level error >"$work/$name-collab-$n.log" 2>&1 &
    pids+=($!)
    if [ "${KILL:-0}" = "$n" ]; then victim=$!; fi
  done
  local kill_flags=()
  if [ -n "$victim" ]; then kill_flags=(--kill-pid "$victim" --kill-after $((requests / 4))); fi
  "$bin" bench dispatch --listen "127.0.0.1:$port" --collaborators "${#costs[@]}" --requests "$requests" \
    --concurrency "$CONCURRENCY" "${kill_flags[@]}" "${flags[@]}" >"$work/$name.out" 2>"$work/$name.err"
  grep '^{' "$work/$name.out" >"$work/$name.json"
  stop_all
}

# nats NAME REQUESTS COSTS…: the same through a queue group.
nats_run() {
  local name=$1 requests=$2
  shift 2
  local port
  port=$(free_port)
  cat >"$work/nats.conf" <<CONF
listen: 127.0.0.1:$port
max_pending: 268435456
tls {
  cert_file: "$PWD/certs/leader.pem"
  key_file: "$PWD/certs/leader.key"
  ca_file: "$PWD/certs/ca.pem"
  verify: true
}
CONF
  nats-server -c "$work/nats.conf" >"$work/$name-nats.log" 2>&1 &
  pids+=($!)
  local py=(.build/nats-venv/bin/python scripts/nats-dispatch.py)
  local tls=(--server "tls://localhost:$port" --ca certs/ca.pem)
  for _ in $(seq 50); do
    "${py[@]}" driver "${tls[@]}" --cert "$certs/soak-9.pem" --key "$certs/key.pem" --requests 0 \
      >/dev/null 2>&1 && break
    sleep 0.1
  done
  local n=0 victim=""
  for cost in "$@"; do
    n=$((n + 1))
    "${py[@]}" worker "${tls[@]}" --cert "$certs/soak-$n.pem" --key "$certs/key.pem" --name "soak-$n" \
      --cost-ms "$cost" >"$work/$name-worker-$n.log" 2>&1 &
    pids+=($!)
    if [ "${KILL:-0}" = "$n" ]; then victim=$!; fi
  done
  for n in $(seq "$#"); do
    for _ in $(seq 100); do grep -q ready "$work/$name-worker-$n.log" 2>/dev/null && break; sleep 0.1; done
  done
  local kill_flags=()
  if [ -n "$victim" ]; then kill_flags=(--kill-pid "$victim" --kill-after $((requests / 4))); fi
  "${py[@]}" driver "${tls[@]}" --cert "$certs/soak-9.pem" --key "$certs/key.pem" --requests "$requests" \
    --concurrency "$CONCURRENCY" --timeout-ms 2000 "${kill_flags[@]}" >"$work/$name.json" 2>"$work/$name.err"
  stop_all
}

field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); v=d
for k in sys.argv[2].split("."): v=v.get(k, 0) if isinstance(v, dict) else 0
print(round(v, 3) if isinstance(v, float) else v)' "$1" "$2"; }
failed() { python3 -c 'import json,sys; print(sum(json.load(open(sys.argv[1]))["failures"].values()))' "$1"; }

even=("$EVEN_MS" "$EVEN_MS" "$EVEN_MS" "$EVEN_MS" "$EVEN_MS" "$EVEN_MS" "$EVEN_MS" "$EVEN_MS")
fast=("$FAST_MS" "$FAST_MS" "$FAST_MS" "$FAST_MS" "$FAST_MS" "$FAST_MS" "$FAST_MS" "$FAST_MS")
slow=("$SLOW_MS" "$FAST_MS" "$FAST_MS" "$FAST_MS" "$FAST_MS" "$FAST_MS" "$FAST_MS" "$FAST_MS")

smsg even "$EVEN_REQUESTS" "${even[@]}"
smsg fast "$SLOW_REQUESTS" "${fast[@]}"
smsg slow "$SLOW_REQUESTS" "${slow[@]}"
KILL=3 smsg kill-idempotent "$KILL_REQUESTS" "${fast[@]}" -- --idempotent
KILL=3 smsg kill-plain "$KILL_REQUESTS" "${fast[@]}"
if [ "$NATS" = 1 ]; then
  nats_run nats-even "$EVEN_REQUESTS" "${even[@]}"
  nats_run nats-fast "$SLOW_REQUESTS" "${fast[@]}"
  nats_run nats-slow "$SLOW_REQUESTS" "${slow[@]}"
  KILL=3 nats_run nats-kill "$KILL_REQUESTS" "${fast[@]}"
fi

echo "dispatch bench: $COLLABORATORS collaborators, concurrency $CONCURRENCY, even ${EVEN_MS} ms, fast ${FAST_MS} ms, slow ${SLOW_MS} ms"
printf '%-22s %-12s %-14s %-12s %-12s\n' workload smsg "" nats ""
printf '%-22s %-12s %-14s %-12s %-12s\n' "even: max/min share" "$(field "$work/even.json" max_min_share)" "" \
  "$([ "$NATS" = 1 ] && field "$work/nats-even.json" max_min_share)" ""
printf '%-22s %-12s %-14s %-12s %-12s\n' "even: requests/s" "$(field "$work/even.json" per_s)" "" \
  "$([ "$NATS" = 1 ] && field "$work/nats-even.json" per_s)" ""
for run in fast slow; do
  printf '%-22s %-12s %-14s %-12s %-12s\n' "$run: p50 / p99 ms" "$(field "$work/$run.json" p50_ms)" \
    "$(field "$work/$run.json" p99_ms)" \
    "$([ "$NATS" = 1 ] && field "$work/nats-$run.json" p50_ms)" "$([ "$NATS" = 1 ] && field "$work/nats-$run.json" p99_ms)"
done
printf '%-22s %-12s %-14s %-12s %-12s\n' "kill: failed (idemp.)" "$(failed "$work/kill-idempotent.json")" "" \
  "$([ "$NATS" = 1 ] && failed "$work/nats-kill.json")" ""
printf '%-22s %-12s %-14s\n' "kill: failed (plain)" "$(failed "$work/kill-plain.json")" \
  "may_have_run=$(field "$work/kill-plain.json" may_have_run)"
echo
for run in even fast slow kill-idempotent kill-plain; do echo "smsg $run: $(cat "$work/$run.json")"; done
if [ "$NATS" = 1 ]; then
  for run in even fast slow kill; do echo "nats $run: $(cat "$work/nats-$run.json")"; done
fi
