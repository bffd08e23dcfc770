#!/usr/bin/env bash
# Soak: `smsg-soak soak` for MINUTES (default 30) — a leader in its own process, and
# COLLABORATORS (default 200) collaborators in SWARMS (default 4) processes joining, leaving,
# sending acknowledged messages, getting their connections cut, and whole processes killed
# (SIGKILL) or frozen (SIGSTOP) at random. It fails unless no acknowledged message was lost,
# the leader's sessions and records went back to zero, its file descriptors are back to their
# count before the swarms, and its RSS stayed flat over the second half of the load.
# Prints progress on stderr and one JSON line (the figures) on stdout.
#
# Usage: scripts/soak.sh [MINUTES]   (CI runs `CONFIG=debug scripts/soak.sh 2`)
# Env: COLLABORATORS=200 SWARMS=4 CHAOS_INTERVAL=15 (seconds between kills/freezes)
#      SEED=<number> (repeat a run's random choices) CONFIG=release|debug (default release)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
[[ "$minutes" =~ ^[0-9]+$ && "$minutes" -ge 1 ]] || { echo "usage: $0 [MINUTES ≥ 1]" >&2; exit 2; }
COLLABORATORS=${COLLABORATORS:-200}
SWARMS=${SWARMS:-4}
CHAOS_INTERVAL=${CHAOS_INTERVAL:-15}
CONFIG=${CONFIG:-release}
scripts/ensure-deps.sh
scripts/gen-certs.sh >/dev/null
scripts/gen-soak-certs.sh "$COLLABORATORS" >&2
swift build -c "$CONFIG" --product smsg-soak >&2
bin="$(swift build -c "$CONFIG" --show-bin-path)/smsg-soak"
# A sample every 5 s for short runs, every 30 s for long ones.
sample=$((minutes > 5 ? 30 : 5))
exec "$bin" soak --duration $((minutes * 60)) --collaborators "$COLLABORATORS" --swarms "$SWARMS" \
    --chaos-interval "$CHAOS_INTERVAL" --sample-interval "$sample" ${SEED:+--seed "$SEED"}
