#!/usr/bin/env bash
# Builds an image with nothing pulled from a registry: FROM scratch, the binaries, the
# shared libraries they link as ldd finds them on this machine (the loader included),
# a non-root user, and the data directory.
#
#   docker/build-image.sh [TAG]                  Flotilla: kv-server, pd-server, kvctl,
#                                                kv-bench (after `make build`; debug info
#                                                stripped, symbols kept for backtraces)
#   docker/build-image.sh --prometheus [TAG]     Prometheus from Debian's package, with
#                                                docker/prometheus.yml
#
# BIN_DIR names another directory holding Flotilla's four binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

kind=flotilla
if [[ "${1:-}" == "--prometheus" ]]; then
    kind=prometheus
    shift
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/etc" "$ctx/data"
mkdir -m 1777 "$root/tmp"

# Copies every library the given executables need to the path the loader looks in; the
# vDSO has no file.
copy_libraries() {
    for b in "$@"; do ldd "$b"; done |
        awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
        sort -u |
        while read -r lib; do
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done
}

users() {
    echo "root:x:0:0:root:/:/nonexistent" > "$root/etc/passwd"
    printf 'root:x:0:\n' > "$root/etc/group"
    echo "$1:x:$2:$2:$1:$3:/nonexistent" >> "$root/etc/passwd"
    echo "$1:x:$2:" >> "$root/etc/group"
}

if [[ "$kind" == flotilla ]]; then
    tag="${1:-flotilla:latest}"
    bin="${BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}/release}"
    binaries=(kv-server pd-server kvctl kv-bench)
    mkdir -p "$root/usr/local/bin"
    for b in "${binaries[@]}"; do
        [[ -x "$bin/$b" ]] || { echo "missing $bin/$b: run 'make build' first" >&2; exit 1; }
        strip --strip-debug -o "$root/usr/local/bin/$b" "$bin/$b"
    done
    copy_libraries "${binaries[@]/#/$bin/}"
    users flotilla 10001 /data
    cp docker/Dockerfile "$ctx/Dockerfile"
else
    tag="${1:-flotilla-prometheus:latest}"
    prom=$(command -v prometheus) || { echo "prometheus is missing: make deps" >&2; exit 1; }
    mkdir -p "$root/usr/bin" "$root/etc/prometheus"
    cp -L "$prom" "$root/usr/bin/prometheus"
    copy_libraries "$prom"
    cp docker/prometheus.yml "$root/etc/prometheus/prometheus.yml"
    users nobody 65534 /prometheus
    cp docker/Dockerfile.prometheus "$ctx/Dockerfile"
fi

docker build --quiet --tag "$tag" "$ctx" >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$tag")
echo "built $tag: $((size / 1024 / 1024)) MiB"
