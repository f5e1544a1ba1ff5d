#!/bin/bash
# Read throughput by read mode (leader, follower, stale=10s) on a PD and three stores on
# loopback, each store in a zone of its own; prints kv-bench's summary per mode and the
# reads each store served. Everything it starts is stopped when it exits.
#   scripts/bench-read-modes.sh [--threads 64] [--duration 10s] [--keys 10000]
set -euo pipefail
THREADS=64 DURATION=10s KEYS=10000
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --keys) KEYS=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}/release
DIR=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
PD=127.0.0.1:23791
"$BIN/pd-server" --addr $PD --data-dir "$DIR/pd" --status-addr 127.0.0.1:23792 \
  --location-labels zone --isolation-level zone 2>"$DIR/pd.log" & PIDS+=($!)
for _ in $(seq 100); do [ -s "$DIR/pd/cluster-secret" ] && break; sleep 0.2; done
for i in 1 2 3; do
  "$BIN/kv-server" --pd $PD --cluster-secret-file "$DIR/pd/cluster-secret" \
    --addr 127.0.0.1:2316$i --status-addr 127.0.0.1:2318$i --data-dir "$DIR/store$i" \
    --labels zone=z$i 2>"$DIR/store$i.log" & PIDS+=($!)
done
export FLOTILLA_PD=$PD FLOTILLA_CLUSTER_SECRET_FILE=$DIR/pd/cluster-secret
for _ in $(seq 120); do
  "$BIN/kvctl" region list 2>/dev/null | grep -q ":voter.*:voter.*:voter" && break; sleep 1
done
"$BIN/kv-bench" --pd $PD --workload write --keys "$KEYS" --ops "$KEYS" --threads 32 >/dev/null
served() {
  for i in 1 2 3; do
    python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' \
      "http://127.0.0.1:2318$i/metrics" |
      awk '/^flotilla_server_reads_total\{/ && /outcome="served"/ {s+=$NF} END {printf "%d ", s}'
  done
}
for mode in leader follower stale=10s; do
  before=$(served)
  echo "== --read $mode ($THREADS tasks, $DURATION)"
  "$BIN/kv-bench" --pd $PD --workload read --keys "$KEYS" --duration "$DURATION" \
    --threads "$THREADS" --read "$mode"
  echo "reads served per store, before: $before after: $(served)"
done
