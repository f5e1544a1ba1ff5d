# For a machine with registry access: builds the binaries from source in a Rust image and
# runs them on Debian slim. This machine has no registry, so `make image` does not use
# it (see Dockerfile). From the repository root:
#   docker build -f docker/Dockerfile.builder -t flotilla:latest .
# Needs BuildKit (the default builder since Docker 23). The image takes the same
# commands as the scratch one (docker-compose.yml).

FROM rust:1-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake g++ make protobuf-compiler libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --bin kv-server --bin pd-server --bin kvctl --bin kv-bench \
    && mkdir -p /out \
    && for b in kv-server pd-server kvctl kv-bench; do \
         strip --strip-debug -o /out/$b target/release/$b; done

FROM debian:bookworm-slim
RUN useradd --uid 10001 --user-group --home-dir /data --no-create-home flotilla \
    && mkdir /data && chown flotilla:flotilla /data
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 20160 2379 20180
CMD ["kv-server", "--help"]
