#!/usr/bin/env bash
# Builds the Flotilla image with nothing pulled from a registry: FROM scratch, the
# release binaries (debug info stripped, symbols kept for backtraces), the shared
# libraries they link as ldd finds them on this machine, a non-root user and /data.
# Usage: docker/build-image.sh [TAG]   (after `make build`; `make image` does both)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}/release"
tag="${1:-flotilla:latest}"
binaries=(kv-server pd-server kvctl kv-bench)
uid=10001

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc" "$ctx/data"
mkdir -m 1777 "$root/tmp"

for b in "${binaries[@]}"; do
    [[ -x "$bin/$b" ]] || { echo "missing $bin/$b: run 'make build' first" >&2; exit 1; }
    strip --strip-debug -o "$root/usr/local/bin/$b" "$bin/$b"
done

# Every library any binary needs, at the path the loader looks for it (the loader
# itself included); the vDSO has no file.
for b in "${binaries[@]}"; do ldd "$bin/$b"; done |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    sort -u |
    while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done

echo "root:x:0:0:root:/:/nonexistent" > "$root/etc/passwd"
echo "flotilla:x:$uid:$uid:flotilla:/data:/nonexistent" >> "$root/etc/passwd"
printf 'root:x:0:\nflotilla:x:%s:\n' "$uid" > "$root/etc/group"

cp docker/Dockerfile "$ctx/Dockerfile"
docker build --quiet --tag "$tag" "$ctx" >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$tag")
echo "built $tag: $((size / 1024 / 1024)) MiB"
