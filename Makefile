# Keel: the two commands are `make demo` (run it) and `make test` (test it).
SHELL := /bin/bash
CARGO ?= cargo
STATE ?= /var/lib/keel-dev
NODES ?= 3

.PHONY: demo test deps build build-release unit integration openapi bench bench-vm down clean-dev fmt lint image image-deps e2e

# Host packages the dev cluster and the tests need (Debian 12).
HOST_PKGS := iproute2 util-linux procps kmod ca-certificates pkg-config gcc make python3 \
	$(shell cat system/*/APT_PACKAGES 2>/dev/null)

deps:
	@missing=""; for p in $(HOST_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq $$missing; \
	fi
	@command -v cargo >/dev/null || { echo "cargo is missing: install Rust (rustup) first"; exit 1; }

build:
	$(CARGO) build --workspace --bins

build-release:
	$(CARGO) build --release --workspace --bins

# Runs a 3-node cluster on this machine and prints where it is.
demo: deps build-release
	@./target/release/keel dev down --state $(STATE) >/dev/null 2>&1 || true
	@./target/release/keel dev up --nodes $(NODES) --state $(STATE) > $(STATE).json
	@python3 -c 'import json,sys; d=json.load(open("$(STATE).json")); print(); print("Keel is up:", d["endpoint"]); print("  user:    ", d["username"]); print("  password:", d["password"]); print("  CA cert: ", d["ca_cert"]); print(); print("Try: export KEEL_CA_CERT=%s KEEL_USERNAME=%s KEEL_PASSWORD=%s" % (d["ca_cert"], d["username"], d["password"])); print("     ./target/release/keel cluster status"); print("Stop it with: ./target/release/keel dev down --state $(STATE)")'

down:
	./target/release/keel dev down --state $(STATE) || ./target/debug/keel dev down --state $(STATE)

unit:
	$(CARGO) test --workspace --exclude keel-tests

integration: build
	$(CARGO) test -p keel-tests -- --test-threads=1

# Everything: unit tests, the OpenAPI check, the dev-cluster integration tests (needs root),
# and the appliance end to end (three QEMU VMs from the built image; see tests/e2e/run.sh).
test: deps image-deps build
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=2
	$(MAKE) e2e

openapi:
	KEEL_BLESS=1 $(CARGO) test -p keel-keeld openapi_document_is_checked_in

bench: deps build-release
	./target/release/keel bench cluster --nodes 3 --state /tmp/keel-bench

# VM create against virsh create, 50 VMs at once, keeld memory per VM (real libvirt, TCG).
bench-vm: deps build-release
	tests/guest/build.sh target/guest
	./target/release/keel bench vm --nodes 3 --image target/guest/disk.raw --state /tmp/keel-bench-vm

# The appliance disk image (docs/IMAGE.md): target/image/keel.raw and keel.qcow2. Needs root.
image-deps:
	@missing=""; for p in $(shell cat image/APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

image: image-deps
	$(CARGO) build --release -p keel-keeld -p keel-cli -p keel-installer -p keel-update
	image/build.sh

# Three appliance VMs (QEMU, TCG) form a cluster from their seed disks; one reboots and rejoins.
e2e: image
	tests/e2e/run.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
