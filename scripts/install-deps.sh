#!/usr/bin/env bash
# Installs the system packages the build needs (Debian), only if they are missing:
# cmake and a C++ compiler for the gRPC core and RocksDB, libclang for RocksDB's bindings,
# protoc for the wire protocol's code generation; OpenSSL's headers for gRPC's TLS; iproute2 and ping for the fault tests'
# network namespaces; prometheus (one binary linking only libc) for the metrics test and
# the compose cluster's monitoring image.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# bindgen loads libclang itself (libclang.so or libclang-N.so); libclang-cpp, which other
# packages bring in, does not count.
has_libclang() {
  local f
  for f in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
           /usr/lib/*-linux-gnu/libclang.so* /usr/lib/*-linux-gnu/libclang-[0-9]*.so*; do
    [ -e "$f" ] && return 0
  done
  return 1
}
has_libclang || need+=(libclang-dev)
# grpcio's TLS links the system OpenSSL, found through pkg-config.
[ -e /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)

# Prometheus alone, without what it recommends (node-exporter); its service, where a
# systemd runs, is stopped: tests and the compose image start their own.
lean=()
command -v prometheus >/dev/null 2>&1 || lean+=(prometheus)

# The lint step (make lint) needs rustfmt and clippy; rustup installs them if missing.
for tool in fmt clippy; do
  if ! cargo "$tool" --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
    rustup component add "$([ "$tool" = fmt ] && echo rustfmt || echo clippy)"
  fi
done

if [ ${#need[@]} -eq 0 ] && [ ${#lean[@]} -eq 0 ]; then
  exit 0
fi

echo "installing system packages: ${need[*]} ${lean[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
$sudo apt-get update -qq
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
if [ ${#lean[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${lean[@]}"
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
