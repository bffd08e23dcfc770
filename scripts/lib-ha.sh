# Shell helpers of scripts/demo-ha.sh and scripts/failover-bench.sh (sourced, not run):
# loopback ports, waiting for a line in a log, and a one-member etcd.

# A loopback port nothing answers on, below the range the system hands out to outgoing
# connections (a port taken by one of those is bound, though nothing answers on it).
free_port() {
  local port low=32768
  [ -r /proc/sys/net/ipv4/ip_local_port_range ] && read -r low _ </proc/sys/net/ipv4/ip_local_port_range
  [ "$low" -gt 12000 ] || low=32768
  while :; do
    port=$((10000 + RANDOM % (low - 10000)))
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
# ETCD_URL and appends its pid to the array `pids`. Ports are chosen, not reserved: when
# another process took one meanwhile, etcd exits at once and is started again on others.
start_etcd() {
  local client peer deadline pid attempt
  for attempt in 1 2 3 4 5; do
    client=$(free_port)
    peer=$(free_port)
    rm -rf "$1"
    etcd --name smsg --data-dir "$1" \
      --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "smsg=http://127.0.0.1:$peer" --log-level error >"$2" 2>&1 &
    pid=$!
    deadline=$((SECONDS + 30))
    until (exec 3<>"/dev/tcp/127.0.0.1/$client" && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 &&
      grep -q '"health":"true"' <&3) 2>/dev/null; do
      if ! kill -0 "$pid" 2>/dev/null; then
        break
      fi
      if [ "$SECONDS" -ge "$deadline" ]; then
        kill -9 "$pid" 2>/dev/null || true
        echo "$(basename "$0"): etcd did not start:" >&2
        cat "$2" >&2
        exit 1
      fi
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      pids+=("$pid")
      ETCD_URL="http://127.0.0.1:$client"
      return
    fi
    wait "$pid" 2>/dev/null || true
    grep -q "address already in use" "$2" || break
  done
  echo "$(basename "$0"): etcd did not start:" >&2
  cat "$2" >&2
  exit 1
}
