#!/usr/bin/env bash
# Starts pd-server and three kv-servers on 127.0.0.1 in a temporary directory, runs
# kv-bench against them, prints its report, and stops every process it started (also on
# failure). Extra arguments go to kv-bench, e.g.:
#   scripts/bench-loopback.sh --threads 32 --duration 20s --workload write
# STORE_CONFIG=FILE starts the stores with that config file; SETTLE=SECONDS waits that
# long after the run and then prints the stores' transactional storage (write column
# family) and GC counters (plaintext only). TLS=1 runs the cluster with TLS on every
# port (`kvctl cert init` certificates), kvctl and kv-bench with the client certificate.
# AUTH=1 adds a root user, turns auth on, and runs kv-bench with root's token (every
# request's token is then checked by the stores).
set -euo pipefail

BIN="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}/release"
for b in pd-server kv-server kv-bench kvctl; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: run 'make build' first" >&2; exit 2; }
done

dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

tls() { :; }
if [ -n "${TLS:-}" ]; then
  "$BIN/kvctl" cert init "$dir/certs" >/dev/null
  tls() { echo --ca-path "$dir/certs/ca.pem" --cert-path "$dir/certs/$1.pem" --key-path "$dir/certs/$1-key.pem"; }
  export FLOTILLA_CA_PATH="$dir/certs/ca.pem" FLOTILLA_CERT_PATH="$dir/certs/client.pem" \
    FLOTILLA_KEY_PATH="$dir/certs/client-key.pem"
fi
pd="127.0.0.1:$(port)"
# shellcheck disable=SC2046 # tls prints flags to split
"$BIN/pd-server" --addr "$pd" --data-dir "$dir/pd" --status-addr "127.0.0.1:$(port)" \
  $(tls pd) >"$dir/pd.log" 2>&1 &
pids+=($!)
# Without TLS, stores need the cluster secret PD creates at its first start.
secret="$dir/pd/cluster-secret"
for _ in $(seq 1 100); do [ -s "$secret" ] && break; sleep 0.1; done
[ -s "$secret" ] || { echo "pd-server did not create $secret" >&2; cat "$dir/pd.log" >&2; exit 1; }
store_auth=(--cluster-secret-file "$secret")
[ -z "${TLS:-}" ] || read -r -a store_auth <<<"$(tls store)"
status=()
for i in 1 2 3; do
  status+=("127.0.0.1:$(port)")
  "$BIN/kv-server" --pd "$pd" --addr "127.0.0.1:$(port)" --status-addr "${status[-1]}" \
    ${STORE_CONFIG:+--config "$STORE_CONFIG"} \
    "${store_auth[@]}" --data-dir "$dir/store$i" >"$dir/store$i.log" 2>&1 &
  pids+=($!)
done

# Wait (at most 120 s) until the first region has three voters.
ready=
for _ in $(seq 1 240); do
  if "$BIN/kvctl" --pd "$pd" --timeout 2s region list 2>/dev/null | grep -q ':voter,.*:voter,.*:voter'; then
    ready=1
    break
  fi
  sleep 0.5
done
[ -n "$ready" ] || { echo "the cluster did not get three voters in 120 s" >&2; tail -5 "$dir"/*.log >&2; exit 1; }
"$BIN/kvctl" --pd "$pd" region list

if [ -n "${AUTH:-}" ]; then
  op=("$BIN/kvctl" --pd "$pd" --cluster-secret-file "$secret")
  echo bench-root-password | "${op[@]}" user add root --password-stdin
  "${op[@]}" auth enable
  echo bench-root-password | "$BIN/kvctl" --pd "$pd" --token-file "$dir/token" login root --password-stdin
  FLOTILLA_TOKEN=$(head -1 "$dir/token")
  export FLOTILLA_TOKEN
  # The stores learn that auth is on within a second (server.auth-refresh-interval).
  sleep 3
fi

"$BIN/kv-bench" --pd "$pd" "$@"

if [ -n "${SETTLE:-}" ]; then
  sleep "$SETTLE"
  for s in "${status[@]}"; do
    python3 - "$s" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
want = ('flotilla_engine_keys{cf="write"}', 'flotilla_engine_sst_bytes{cf="write"}',
        'flotilla_engine_memtable_bytes{cf="write"}', 'flotilla_gc_versions_dropped_total',
        'flotilla_gc_safe_point')
vals = {l.split(' ')[0]: l.split(' ')[-1] for l in text.splitlines() if l.startswith(want)}
print(sys.argv[1], ' '.join(f'{k}={v}' for k, v in sorted(vals.items())))
PY
  done
fi
