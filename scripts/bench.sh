#!/usr/bin/env bash
# Side-by-side benchmark: our `securemsg bench` server and client against the peer stacks of
# ../shared/bench (SwiftNIO + swift-nio-ssl, optionally Python asyncio + ssl) on the same
# workloads, in one run, alternating ours and theirs, ROUNDS times; prints one table with the
# medians and the ratios. Raw JSON lines go to $RESULTS (default .build/bench-results.jsonl).
#
# Env: DURATION=5 WARMUP=1 ROUNDS=3 IDLE_COUNT=2000 BIG_IDLE=10000 (0 skips the 10,000-session
#      run) PEERS="nio" (add python for the Python peer; "" runs ours only) BASE_PORT=19600
#      PEER_NIO=<prebuilt peer-nio binary> SHARED_BENCH=<path to the shared bench tool>
#      CONFIG=release|debug (the build of ours to measure; default release)
#      BASELINE=<another securemsg binary> (adds the stack "base": the same commands run with that
#      binary, e.g. main before a change, measured in the same run; add "base" to PEERS)
#      SMOKE=1 (one round of 1 s, ours only, small idle counts, the debug build: proves the tool
#      works and fails on a missing row or an error; CI runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    : "${DURATION:=1}" "${WARMUP:=0.2}" "${ROUNDS:=1}" "${IDLE_COUNT:=50}" "${BIG_IDLE:=0}" "${PEERS:=}" "${CONFIG:=debug}"
fi
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-3}
IDLE_COUNT=${IDLE_COUNT:-2000}
BIG_IDLE=${BIG_IDLE:-10000}
PEERS=${PEERS-nio}
BASE_PORT=${BASE_PORT:-19600}
SHARED_BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}
RESULTS=${RESULTS:-$ROOT/.build/bench-results.jsonl}
CONFIG=${CONFIG:-release}

log() { echo "[bench $(date +%T)] $*" >&2; }

scripts/ensure-deps.sh
t_start=$(date +%s)

log "swift build -c $CONFIG (securemsg)"
swift build -c "$CONFIG" --product securemsg >&2
OURS="$(swift build -c "$CONFIG" --show-bin-path)/securemsg"

if [ -n "$PEERS" ] && [ ! -d "$SHARED_BENCH/peer-nio" ]; then
    log "no peer stacks at $SHARED_BENCH: measuring ours only"
    PEERS=""
fi
if [[ " $PEERS " == *" nio "* ]] && [ -z "${PEER_NIO:-}" ]; then
    log "swift build -c release (peer-nio)"
    (cd "$SHARED_BENCH/peer-nio" && swift build -c release >&2)
    PEER_NIO="$(cd "$SHARED_BENCH/peer-nio" && swift build -c release --show-bin-path)/peer-nio"
fi
PYTHON=${PYTHON:-python3}

big=$BIG_IDLE
[ "$IDLE_COUNT" -gt "$big" ] && big=$IDLE_COUNT
need=$((big + 512))
if [ "$(ulimit -n)" -lt "$need" ]; then ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)"; fi
if [ "$(ulimit -n)" -lt "$need" ]; then
    log "fd limit $(ulimit -n) is below $need: the large idle run is skipped"
    BIG_IDLE=0
fi

work=$(mktemp -d)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        if kill -0 "$p" 2>/dev/null; then kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; fi
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The same certificates for every stack: ECDSA P-256 from the shared tool when present.
CERTS=$work/certs
if [ -x "$SHARED_BENCH/certs.sh" ]; then
    "$SHARED_BENCH/certs.sh" "$CERTS" 2>/dev/null
else
    scripts/gen-certs.sh "$CERTS" >/dev/null
fi

mkdir -p "$(dirname "$RESULTS")"
: >"$RESULTS"
port=$BASE_PORT
SPID=""

server_cmd() { # stack mode -> SRV array
    case "$1" in
        ours) SRV=("$OURS" bench server --listen "127.0.0.1:$port" --max-connections $((big + 100))) ;;
        base) SRV=("$BASELINE" bench server --listen "127.0.0.1:$port" --max-connections $((big + 100))) ;;
        nio) SRV=("$PEER_NIO" server --port "$port") ;;
        python) SRV=("$PYTHON" "$SHARED_BENCH/peer-python/echo.py" server --port "$port") ;;
    esac
    case "$2" in
        plain) SRV+=(--plaintext) ;;
        tls) SRV+=(--cert "$CERTS/server.pem" --key "$CERTS/server.key") ;;
    esac
}

client_cmd() { # stack mode -> CLI array
    case "$1" in
        ours) CLI=("$OURS" bench client --connect "127.0.0.1:$port") ;;
        base) CLI=("$BASELINE" bench client --connect "127.0.0.1:$port") ;;
        nio) CLI=("$PEER_NIO" client --port "$port") ;;
        python) CLI=("$PYTHON" "$SHARED_BENCH/peer-python/echo.py" client --port "$port") ;;
    esac
    case "$2" in
        plain) CLI+=(--plaintext) ;;
        tls) CLI+=(--ca "$CERTS/ca.pem") ;;
    esac
}

start_server() { # stack mode
    port=$((port + 1))
    server_cmd "$1" "$2"
    "${SRV[@]}" >"$work/server.out" 2>"$work/server.err" &
    SPID=$!
    PIDS+=("$SPID")
    local i
    for i in $(seq 200); do
        grep -q listening "$work/server.out" "$work/server.err" 2>/dev/null && return 0
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.05
    done
    echo "server $1 did not start:" >&2
    cat "$work/server.out" "$work/server.err" >&2
    exit 1
}

stop_server() {
    kill "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    SPID=""
}

record() { # stack mode round json
    local line=$4
    [ -n "$line" ] || line='{"error":"no result"}'
    printf '%s\n' "$line" | sed "s/^{/{\"stack\":\"$1\",\"mode\":\"$2\",\"round\":$3,/" >>"$RESULTS"
}

run_one() { # stack mode workload round
    local stack=$1 mode=$2 wl=$3 round=$4 out
    log "round $round: $stack $wl ($mode)"
    start_server "$stack" "$mode"
    client_cmd "$stack" "$mode"
    out=$(timeout $((${WARMUP%.*} + ${DURATION%.*} + 60)) "${CLI[@]}" --workload "$wl" \
        --duration "$DURATION" --warmup "$WARMUP" 2>"$work/client.err" | grep '^{' | tail -1) || true
    [ -s "$work/client.err" ] && sed "s/^/[$stack $wl client] /" "$work/client.err" | tail -5 >&2
    stop_server
    record "$stack" "$mode" "$round" "$out"
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Opens COUNT sessions and reads the server's VmRSS before and (1 s after the client reports)
# while they are held, as the shared idle-mem.sh does.
run_idle() { # stack count
    local stack=$1 count=$2 before after cpid
    log "$stack idle ($count TLS sessions)"
    start_server "$stack" tls
    sleep 0.5
    before=$(rss_kib "$SPID")
    client_cmd "$stack" tls
    rm -f "$work/hold"
    mkfifo "$work/hold"
    "${CLI[@]}" --workload idle --count "$count" <"$work/hold" >"$work/idle.out" 2>"$work/idle.err" &
    cpid=$!
    PIDS+=("$cpid")
    exec 3>"$work/hold"
    for _ in $(seq 2400); do
        [ -s "$work/idle.out" ] && break
        kill -0 "$cpid" 2>/dev/null || break
        sleep 0.1
    done
    sleep 1
    after=$(rss_kib "$SPID")
    exec 3>&-
    wait "$cpid" 2>/dev/null || true
    [ -s "$work/idle.err" ] && tail -3 "$work/idle.err" >&2
    stop_server
    local line
    line=$("$PYTHON" - "$work/idle.out" "$before" "$after" <<'PY'
import json, sys
try:
    r = json.loads(open(sys.argv[1]).readline())
except Exception:
    print('{"error":"no result"}'); sys.exit()
before, after = int(sys.argv[2]), int(sys.argv[3])
n = r["connections"]
print(json.dumps({"workload": "idle", "connections": n,
                  "kib_per_conn": round((after - before) / n, 2) if n else None,
                  "rss_before_kib": before, "rss_after_kib": after,
                  "open_s": r.get("open_s"), "failed": r.get("failed")}, separators=(",", ":")))
PY
)
    record "$stack" "tls" 0 "$line"
}

for round in $(seq "$ROUNDS"); do
    for wl in echo bulk handshake; do
        run_one ours tls "$wl" "$round"
        for p in $PEERS; do run_one "$p" tls "$wl" "$round"; done
    done
    run_one ours tls resume "$round"
    run_one ours plain echo "$round"
    for p in $PEERS; do run_one "$p" plain echo "$round"; done
done
run_idle ours "$IDLE_COUNT"
for p in $PEERS; do run_idle "$p" "$IDLE_COUNT"; done
if [ "$BIG_IDLE" -gt 0 ]; then
    run_idle ours "$BIG_IDLE"
fi

log "done in $(($(date +%s) - t_start)) s; raw results in $RESULTS"
"$PYTHON" - "$RESULTS" "$ROUNDS" "$SMOKE" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(stack, mode, wl, key, count=None):
    vals = [r[key] for r in rows
            if r.get("stack") == stack and r.get("mode") == mode and r.get("workload") == wl
            and r.get(key) is not None and (count is None or r.get("connections") == count)]
    return statistics.median(vals) if vals else None
stacks = []
for r in rows:
    if r.get("stack") not in stacks: stacks.append(r["stack"])
peers = [s for s in stacks if s != "ours"]
def fmt(v, digits=0):
    if v is None: return "-"
    return f"{v:,.{digits}f}"
metrics = [
    ("echo 16x32x64 B, TLS, msgs/s", "tls", "echo", "msgs_per_s", 0, True),
    ("echo 16x32x64 B, plain, msgs/s", "plain", "echo", "msgs_per_s", 0, True),
    ("echo TLS, RTT p50 us", "tls", "echo", "rtt_p50_us", 0, False),
    ("echo TLS, RTT p99 us", "tls", "echo", "rtt_p99_us", 0, False),
    ("echo TLS, RTT p99.9 us", "tls", "echo", "rtt_p999_us", 0, False),
    ("bulk 4x8x64 KiB, TLS, MB/s", "tls", "bulk", "mb_per_s", 0, True),
    ("handshake (full TLS 1.3), /s", "tls", "handshake", "handshakes_per_s", 0, True),
    ("handshake p99 ms", "tls", "handshake", "p99_ms", 2, False),
    ("resume (TLS 1.3 tickets), /s", "tls", "resume", "handshakes_per_s", 0, True),
    ("idle TLS, KiB of server RSS per session", "tls", "idle", "kib_per_conn", 1, False),
]
head = ["metric (median of %s rounds)" % sys.argv[2], "ours"] + peers + ["ours/" + p for p in peers]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
idle_counts = sorted({r.get("connections") for r in rows if r.get("workload") == "idle" and r.get("stack") == "ours"})
small_idle = min(idle_counts) if idle_counts else None
for label, mode, wl, key, digits, _ in metrics:
    count = small_idle if wl == "idle" else None
    ours = med("ours", mode, wl, key, count)
    theirs = [med(p, mode, wl, key) for p in peers]
    ratios = [(f"{ours / t:.2f}" if ours is not None and t else "-") for t in theirs]
    print("| " + " | ".join([label, fmt(ours, digits)] + [fmt(t, digits) for t in theirs] + ratios) + " |")
print()
full = med("ours", "tls", "handshake", "handshakes_per_s")
resume = med("ours", "tls", "resume", "handshakes_per_s")
tls_echo = med("ours", "tls", "echo", "msgs_per_s")
plain_echo = med("ours", "plain", "echo", "msgs_per_s")
if full and resume:
    resumed = [r.get("resumed", 0) / max(r.get("samples", 1), 1) for r in rows if r.get("workload") == "resume"]
    print(f"ours: resume / full handshake = {resume / full:.2f} (sessions resumed: {100 * min(resumed):.0f}% or more)")
if tls_echo and plain_echo:
    print(f"ours: TLS echo / plaintext echo = {tls_echo / plain_echo:.2f}")
for r in rows:
    if r.get("workload") == "idle" and r.get("stack") == "ours" and r.get("connections") != small_idle:
        print(f"ours: {r['connections']} idle TLS sessions: server RSS {r['rss_before_kib'] / 1024:.1f} MiB before, "
              f"{r['rss_after_kib'] / 1024:.1f} MiB while held ({r['kib_per_conn']} KiB each; {r.get('failed')} failed)")
errors = [r for r in rows if r.get("error") or r.get("errors")]
for r in errors:
    print(f"note: {r.get('stack')} {r.get('workload')} round {r.get('round')}: {r.get('error') or str(r.get('errors')) + ' errors'}")
if sys.argv[3] == "1":
    # The smoke run proves the tool works: every workload of ours reported, without errors.
    expected = [("tls", "echo"), ("tls", "bulk"), ("tls", "handshake"), ("tls", "resume"), ("plain", "echo"),
                ("tls", "idle")]
    missing = [f"{m} {w}" for m, w in expected
               if not any(r.get("stack") == "ours" and r.get("mode") == m and r.get("workload") == w
                          and not r.get("error") and (r.get("samples", 1) > 0 or w == "idle")
                          and (w != "idle" or r.get("connections", 0) > 0) for r in rows)]
    if missing or errors:
        print("smoke run failed: " + ", ".join(missing + [f"{r.get('workload')} errors" for r in errors]))
        sys.exit(1)
    print("smoke run passed: every workload reported")
PY
