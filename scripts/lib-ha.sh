# Shell helpers of scripts/demo-ha.sh and scripts/failover-bench.sh (sourced, not run):
# loopback ports, waiting for a line in a log, and a one-member etcd.

# A loopback port nothing answers on.
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
}

# wait_for FILE TEXT [SECONDS]: until FILE contains TEXT; exits the script with the file shown
# when it does not within SECONDS (default 30).
wait_for() {
  local deadline=$((SECONDS + ${3:-30}))
  until grep -qF -- "$2" "$1" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$(basename "$0"): no \"$2\" in $1 after ${3:-30} s:" >&2
      tail -50 "$1" >&2 || true
      exit 1
    fi
    sleep 0.05
  done
}

now_ms() { date +%s%3N; }

# start_etcd DATA_DIR LOG: one etcd member on free loopback ports, healthy on return; sets
# ETCD_URL and appends its pid to the array `pids`.
start_etcd() {
  local client peer deadline
  client=$(free_port)
  peer=$(free_port)
  etcd --name smsg --data-dir "$1" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "smsg=http://127.0.0.1:$peer" --log-level error >"$2" 2>&1 &
  pids+=($!)
  deadline=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/127.0.0.1/$client" && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 &&
    grep -q '"health":"true"' <&3) 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$(basename "$0"): etcd did not start:" >&2
      cat "$2" >&2
      exit 1
    fi
    sleep 0.1
  done
  ETCD_URL="http://127.0.0.1:$client"
}
