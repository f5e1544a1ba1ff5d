# One profile (release, with debug assertions on for our crates) and one target directory
# outside the clone, shared by builds, tests and CI: RocksDB and the gRPC core take most
# of a cold build (see the README's figures), so nothing should build them twice.
CARGO_TARGET_DIR ?= $(HOME)/.cache/flotilla/target
export CARGO_TARGET_DIR
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/release
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: deps build run test lint check-deps jepsen bench bench-vs-etcd clean-data image prometheus-image cluster-up cluster-down

deps:
	@bash scripts/install-deps.sh

# Everything, tests included, so that `make test` after `make build` compiles nothing new.
# `cargo test --no-run` builds the binaries (the tests run them) and exactly the test
# executables `cargo test` runs: targets with `test = false` (the thin mains, crates
# without unit tests) get none. A plain `cargo build` would leave out the tests'
# dependency features and relink the binaries differently each time.
build: deps
	$(CARGO) test --release --workspace --no-run

# A single node with an embedded PD: client gRPC 127.0.0.1:20160, PD 127.0.0.1:2379,
# status 127.0.0.1:20180, data in ./flotilla-data.
run: build
	$(BIN)/kv-server

# The dependency rules of the crate layout (scripts/check-deps.sh), then the same targets
# as `build` (so nothing is rebuilt), then one summary line over every test binary.
# cargo's own status counts too: a test binary that aborts prints no "test result" line.
test: build check-deps
	{ $(CARGO) test --release --workspace --no-fail-fast 2>&1; echo $$? > $(CARGO_TARGET_DIR)/test.status; } \
		| tee $(CARGO_TARGET_DIR)/test.log
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f; exit (f > 0) }' $(CARGO_TARGET_DIR)/test.log
	@exit $$(cat $(CARGO_TARGET_DIR)/test.status)

check-deps: build
	@bash scripts/check-deps.sh

# Formatting and clippy with warnings as errors (missing docs included), on the release
# profile so that they reuse `build`'s C and C++ libraries; clippy checks the Rust
# dependencies once more, in check mode.
lint: build
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

# The long fault campaign: 100 seeded runs of the nemesis on three stores and three PD
# members (kills, pauses, partitions in network namespaces, power loss on a filesystem
# that drops un-fsynced writes; for PD, its leader killed, paused or cut off from the
# other members), odd seeds with raw operations checked for linearizability and lost
# acknowledged writes, even seeds with transactions checked for snapshot isolation, lost
# commits, a bank total while GC collects and unique PD timestamps; every run for replica
# mismatches. Prints the table and keeps it in $(CARGO_TARGET_DIR)/jepsen.txt. About 45
# minutes; needs root. A store or PD member that crashes by a signal leaves nothing in its
# log, so core dumps are on: where they go is the kernel's core_pattern, printed first
# (with the default, `core`, in the process's own directory under the failing run's kept
# directory, `cwd/<name>/`, which the report names).
JEPSEN_RUNS ?= 100
JEPSEN_SECS ?= 20
jepsen: build
	@echo "progress: tail -f $(CARGO_TARGET_DIR)/jepsen.log"
	ulimit -c unlimited || echo "core dumps stay at $$(ulimit -c) blocks (hard limit $$(ulimit -Hc))"; \
	echo "core dumps: $$(ulimit -c) blocks, core_pattern $$(cat /proc/sys/kernel/core_pattern)"; \
	rm -f $(CARGO_TARGET_DIR)/jepsen.txt; status=0; FLOTILLA_NEMESIS_RUNS=$(JEPSEN_RUNS) FLOTILLA_NEMESIS_SECS=$(JEPSEN_SECS) \
	FLOTILLA_NEMESIS_FIRST_SEED=$${JEPSEN_FIRST_SEED:-1} FLOTILLA_NEMESIS_TABLE=$(CARGO_TARGET_DIR)/jepsen.txt \
	$(CARGO) test --release --workspace --test nemesis seeded_fault_runs -- --nocapture > $(CARGO_TARGET_DIR)/jepsen.log 2>&1 \
	|| status=$$?; cat $(CARGO_TARGET_DIR)/jepsen.txt || true; exit $$status

# Fsyncs per write under 32 writers against a running cluster (see README).
bench: build
	$(BIN)/kv-bench --clients 32 --duration 20s --workload write-only

# Flotilla and etcd side by side on this machine; prints the README's performance table
# (scripts/bench-vs-etcd.sh: about 6 minutes).
bench-vs-etcd: build
	bash scripts/bench-vs-etcd.sh

# The images, FROM scratch with nothing pulled (docker/build-image.sh): Flotilla's
# binaries, and Prometheus from Debian's package for the compose `monitoring` profile.
IMAGE ?= flotilla:latest
PROMETHEUS_IMAGE ?= flotilla-prometheus:latest
image: build
	bash docker/build-image.sh $(IMAGE)
prometheus-image: deps
	bash docker/build-image.sh --prometheus $(PROMETHEUS_IMAGE)

# The compose cluster (docker/docker-compose.yml): three PD members, three stores; MONITORING=1
# adds Prometheus on 127.0.0.1:9090; ZONES=1 lays the zone layout over it
# (docker/docker-compose.zones.yml: each PD member and store in a zone of its own, stores
# labelled, PD isolating replicas by zone). `cluster-down` removes containers and
# networks; with VOLUMES=1 the data volumes too.
# TLS=1 lays docker/docker-compose.tls.yml over them (every port TLS, certificates from
# `kvctl cert init docker/certs` and a `monitor` certificate for Prometheus, made here
# unless FLOTILLA_CERTS names a directory; the keys, 0600, are handed to the images'
# users, uid 10001 and Prometheus's 65534).
COMPOSE := docker-compose -p flotilla -f docker/docker-compose.yml $(if $(ZONES),-f docker/docker-compose.zones.yml) $(if $(TLS),-f docker/docker-compose.tls.yml)
cluster-up: image $(if $(MONITORING),prometheus-image)
	if [ -n "$(TLS)" ] && [ -z "$$FLOTILLA_CERTS" ] && [ ! -e docker/certs/ca.pem ]; then \
		$(BIN)/kvctl cert init docker/certs && $(BIN)/kvctl cert issue docker/certs monitor && \
		chown 10001:10001 docker/certs/pd-key.pem docker/certs/store-key.pem docker/certs/client-key.pem && \
		chown 65534:65534 docker/certs/monitor-key.pem; fi
	FLOTILLA_IMAGE=$(IMAGE) FLOTILLA_PROMETHEUS_IMAGE=$(PROMETHEUS_IMAGE) \
		$(COMPOSE) $(if $(MONITORING),--profile monitoring) up -d
cluster-down:
	$(COMPOSE) --profile monitoring down --remove-orphans $(if $(VOLUMES),--volumes)

clean-data:
	rm -rf ./flotilla-data
