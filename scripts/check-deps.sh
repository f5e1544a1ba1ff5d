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
  cli clap rustyline indicatif shlex prometheus-parse hdrhistogram
forbid cli "speaks the wire protocol only" server pd raftstore engine node txn
forbid pd "PD knows nothing of the store" server raftstore client txn
forbid pd_client "speaks the wire protocol only" server pd raftstore engine
forbid util "the client library links it" hyper axum clap conf proto keys
forbid conf "a leaf" util proto keys grpcio tokio hyper
forbid status "serves /metrics and /status, knows no component" proto server pd raftstore engine
forbid proto "messages only" grpcio proto_grpc util
forbid proto_grpc "the generated services only" util keys engine
forbid keys "key encodings only" engine raft grpcio proto
forbid engine "storage only" raft grpcio keys
forbid auth "the rules of users, roles and tokens: messages, no storage or transport" \
  grpcio engine util keys tokio
forbid lazyfs "a filesystem for tests, of no component" util proto engine

# The binaries themselves: the root package's dependencies are shared by its four
# binaries, so look at what each server actually linked (its symbols; the servers parse
# their own flags, so clap is allowed). kvctl must show the crates, or the check is blind.
bins="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}/release"
pattern=$(tr ' -' '|_' <<<"${CLI_CRATES#clap }")
command -v nm >/dev/null || { echo "check-deps: nm is missing (binutils)"; exit 1; }
linked() {
  local syms
  [ -x "$bins/$1" ] || { echo "check-deps: $bins/$1 is not built (make build)" >&2; return 2; }
  syms=$(nm -C "$bins/$1") || { echo "check-deps: nm cannot read $bins/$1" >&2; return 2; }
  { grep -oE "\b($pattern)::" <<<"$syms" || true; } | sort -u | tr '\n' ' '
}
found=$(linked kvctl) || exit 1
if [ -z "$found" ]; then
  echo "check-deps: kvctl shows none of kvctl's crates: the symbol check cannot see them"
  broken=1
fi
for bin in kv-server pd-server; do
  found=$(linked "$bin") || exit 1
  if [ -n "$found" ]; then
    echo "check-deps: the $bin binary links kvctl's crates: $found"
    broken=1
  else
    echo "check-deps: ok: $bin links none of ${CLI_CRATES#clap }"
  fi
done
exit $broken
