#!/usr/bin/env bash
# Flotilla and etcd side by side on this machine (`make bench-vs-etcd`, after
# `make build`). Each system runs alone on 127.0.0.1, in a temporary directory:
#   1. etcd: three members from Debian's etcd-server (installed if missing);
#   2. Flotilla: three pd-server members and three kv-servers;
#   3. Flotilla: one kv-server with its embedded PD.
# Against each, kv-bench loads the keys, then runs every workload for DURATION after
# WARMUP, with the same clients, keys and values; both sides fsync every commit (etcd
# always does; Flotilla's raftstore.sync-log is on by default). Prints one table with
# the ratios and writes it, with every run's JSON report, to OUT (a directory; default
# bench-results/ in the current directory). The data directories go under TMPDIR, which
# must not be tmpfs. Every process it starts is stopped when it exits, also on failure
# or Ctrl-C.
#
# Settings (environment): DURATION (20s), WARMUP (3s), CLIENTS (64), CONNECTIONS (4),
# KEYS (100000), KEY_SIZE (16), VALUE_SIZE (256), WORKLOADS ("write-only ycsb-c ycsb-a
# ycsb-b ycsb-e"), TXN=0 skips the transactional runs, SINGLE=0 the single store, ETCD=0
# etcd, OUT.
set -euo pipefail

BIN="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}/release"
for b in pd-server kv-server kv-bench kvctl; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: run 'make build' first" >&2; exit 2; }
done
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-3s}
CLIENTS=${CLIENTS:-64}
CONNECTIONS=${CONNECTIONS:-4}
KEYS=${KEYS:-100000}
KEY_SIZE=${KEY_SIZE:-16}
VALUE_SIZE=${VALUE_SIZE:-256}
WORKLOADS=${WORKLOADS:-write-only ycsb-c ycsb-a ycsb-b ycsb-e}
OUT=${OUT:-bench-results}
here=$(cd "$(dirname "$0")" && pwd)

if [ "${ETCD:-1}" != 0 ] && ! { command -v etcd && command -v etcdctl; } >/dev/null 2>&1; then
  echo "installing Debian's etcd-server and etcd-client (etcdctl)"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    etcd-server etcd-client
  # Debian starts its own etcd where systemd runs; this script starts its own members.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    $sudo systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

# Every run's arguments are checked before anything starts: a bad setting fails here,
# not after a cluster came up.
common=(--clients "$CLIENTS" --connections "$CONNECTIONS" --keys "$KEYS" --key-size "$KEY_SIZE"
  --value-size "$VALUE_SIZE" --quiet --output json)
check() { "$BIN/kv-bench" "${common[@]}" --check-only "$@" >/dev/null; }
check --workload load --duration 600s
for w in $WORKLOADS; do
  for d in etcd flotilla; do
    check --driver "$d" --workload "$w" --duration "$DURATION" --warmup "$WARMUP"
  done
done
for mode in two-phase one-pc; do
  check --workload txn --txn-commit "$mode" --duration "$DURATION" --warmup "$WARMUP"
done

dir=$(mktemp -d)
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM
# On tmpfs an fsync costs nothing, and neither side's figures would mean what they say.
if [ "$(stat -f -c %T "$dir")" = tmpfs ]; then
  echo "$dir is on tmpfs, where fsync does nothing: set TMPDIR to a directory on disk" >&2
  exit 2
fi
# Only this run's reports make the table; nothing else in OUT is touched.
mkdir -p "$OUT"
rm -f "$OUT"/{etcd,flotilla,single}-*.json "$OUT/table.md"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every half second.
wait_for() {
  local secs=$1 what=$2
  shift 2
  for _ in $(seq 1 $((secs * 2))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "$what did not happen in ${secs}s; logs:" >&2
  tail -n 5 "$dir"/*.log >&2 || true
  exit 1
}

# bench SYSTEM RUN DRIVER ENDPOINTS KV-BENCH-ARGS...: one kv-bench run, its JSON kept as
# OUT/SYSTEM-RUN.json.
bench() {
  local system=$1 run=$2 driver=$3 eps=$4
  shift 4
  echo "== $system: $run" >&2
  # Kept only once whole: a run that fails leaves no half-written report behind.
  "$BIN/kv-bench" "${common[@]}" --driver "$driver" --endpoints "$eps" "$@" >"$dir/report.json"
  mv "$dir/report.json" "$OUT/$system-$run.json"
}

# run_all SYSTEM DRIVER ENDPOINTS: the load, then every workload.
run_all() {
  local system=$1 driver=$2 eps=$3
  bench "$system" load "$driver" "$eps" --workload load --duration 600s
  for w in $WORKLOADS; do
    bench "$system" "$w" "$driver" "$eps" --workload "$w" --duration "$DURATION" --warmup "$WARMUP"
  done
}

if [ "${ETCD:-1}" != 0 ]; then
  cluster="" eps=""
  declare -A peer client
  for i in 1 2 3; do
    peer[$i]="http://127.0.0.1:$(port)"
    client[$i]="http://127.0.0.1:$(port)"
    cluster+="${cluster:+,}e$i=${peer[$i]}"
    eps+="${eps:+,}${client[$i]#http://}"
  done
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$dir/etcd$i" \
      --listen-peer-urls "${peer[$i]}" --initial-advertise-peer-urls "${peer[$i]}" \
      --listen-client-urls "${client[$i]}" --advertise-client-urls "${client[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) >"$dir/etcd$i.log" 2>&1 &
    pids+=($!)
  done
  wait_for 60 "etcd's three members becoming healthy" \
    env ETCDCTL_API=3 etcdctl --endpoints "$eps" endpoint health
  run_all etcd etcd "$eps"
  stop_all
fi

# Flotilla: three PD members (pd1 sorts first: it creates the cluster secret), three stores.
cluster="" eps=""
declare -A pd_addr
for i in 1 2 3; do
  pd_addr[$i]="127.0.0.1:$(port)"
  cluster+="${cluster:+,}pd$i=${pd_addr[$i]}"
  eps+="${eps:+,}${pd_addr[$i]}"
done
for i in 1 2 3; do
  "$BIN/pd-server" --name "pd$i" --addr "${pd_addr[$i]}" --initial-cluster "$cluster" \
    --status-addr "127.0.0.1:$(port)" --data-dir "$dir/pd$i" >"$dir/pd$i.log" 2>&1 &
  pids+=($!)
done
wait_for 60 "pd1 creating the cluster secret" test -s "$dir/pd1/cluster-secret"
for i in 1 2 3; do
  "$BIN/kv-server" --pd "$eps" --addr "127.0.0.1:$(port)" --status-addr "127.0.0.1:$(port)" \
    --cluster-secret-file "$dir/pd1/cluster-secret" --data-dir "$dir/store$i" >"$dir/store$i.log" 2>&1 &
  pids+=($!)
done
three_voters() { "$BIN/kvctl" --pd "$eps" --timeout 2s region list | grep -q ':voter,.*:voter,.*:voter'; }
wait_for 120 "the first region getting three voters" three_voters
run_all flotilla flotilla "$eps"
if [ "${TXN:-1}" != 0 ]; then
  for mode in two-phase one-pc; do
    bench flotilla "txn-$mode" flotilla "$eps" --workload txn --txn-commit "$mode" \
      --duration "$DURATION" --warmup "$WARMUP"
  done
fi
stop_all

if [ "${SINGLE:-1}" != 0 ]; then
  pd="127.0.0.1:$(port)"
  cat >"$dir/single.toml" <<EOF
[server]
addr = "127.0.0.1:$(port)"
status-addr = "127.0.0.1:$(port)"
data-dir = "$dir/single"
[pd]
addr = "$pd"
EOF
  "$BIN/kv-server" --config "$dir/single.toml" >"$dir/single.log" 2>&1 &
  pids+=($!)
  wait_for 60 "the single store answering" "$BIN/kvctl" --pd "$pd" --timeout 2s region list
  WORKLOADS="write-only ycsb-c" run_all single flotilla "$pd"
  stop_all
fi

python3 "$here/bench-table.py" "$OUT" | tee "$OUT/table.md"
