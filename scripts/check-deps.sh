#!/usr/bin/env bash
# The dependency rules of the crate layout (docs/design.md, "Crates"), checked so that
# they cannot quietly come back. Each rule names a crate and what must not be in its
# normal (non-dev) dependency tree; the kv-server binary is also checked for the symbols
# of kvctl's crates, since the four binaries share one package. Exits 1 naming every
# broken rule. `make test` runs it; `make check-deps` runs it alone.
set -euo pipefail
cd "$(dirname "$0")/.."

# Crates only the command-line tools may link.
CLI_CRATES="clap rustyline indicatif shlex prometheus-parse hdrhistogram"
broken=0

# forbid CRATE "WHY" DEP...: fails if any DEP is in CRATE's normal dependency tree.
forbid() {
  local crate=$1 why=$2
  shift 2
  local tree found=()
  tree=$(cargo tree --offline -p "$crate" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
  for dep in "$@"; do
    grep -qx -- "$dep" <<<"$tree" && found+=("$dep")
  done
  if [ ${#found[@]} -gt 0 ]; then
    echo "check-deps: $crate must not depend on ${found[*]} ($why); see: cargo tree -p $crate -i ${found[0]}"
    broken=1
  else
    echo "check-deps: ok: $crate has none of $*"
  fi
}

forbid client "a library: its users would link the command-line crates" \
  $CLI_CRATES hyper axum server pd raftstore engine
forbid raftstore "Raft knows no wire transport or PD" grpcio grpcio-sys pd_client pd server
forbid txn "Percolator over a snapshot: no Raft, no wire transport" raftstore grpcio pd_client
forbid server "the embedded PD is composed in node; the store links no command-line crate" \
  pd cli rustyline indicatif shlex prometheus-parse hdrhistogram clap
forbid node "composes a store and a PD, nothing of the command line" \
  cli rustyline indicatif shlex prometheus-parse hdrhistogram
forbid pd "PD knows nothing of the store" server raftstore client
forbid util "the client library links it" hyper axum clap
forbid conf "a leaf" util grpcio tokio
forbid keys "key encodings only" engine raft grpcio
forbid engine "storage only" raft grpcio keys

# The binary itself: the root package's dependencies are shared by its four binaries,
# so look at what kv-server actually linked.
bin="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}/release/kv-server"
if [ -x "$bin" ]; then
  pattern=$(tr ' -' '|_' <<<"$CLI_CRATES" | sed 's/^clap|//')
  linked=$(nm -C "$bin" 2>/dev/null | grep -oE "\b($pattern)::" | sort -u | tr '\n' ' ' || true)
  if [ -n "$linked" ]; then
    echo "check-deps: the kv-server binary links kvctl's crates: $linked"
    broken=1
  else
    echo "check-deps: ok: kv-server links none of ${CLI_CRATES#clap }"
  fi
else
  echo "check-deps: $bin is not built; build it first (make build)"
  broken=1
fi
exit $broken
