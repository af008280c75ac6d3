# corelite: one-line targets; logic lives in scripts/ and Rust.
.PHONY: deps build dist image test lint bench chaos demo demo-down clean

deps:
	./scripts/deps.sh

build: deps
	cargo build --release --workspace

# The image tests boot target/image, so the image is built (or refreshed) first.
test: deps image
	cargo test --workspace --release -- --test-threads=4

# The chaos test (faults under load, linearizability, identical replicas), long:
# make chaos MINUTES=30 [SEED=n]. `make test` runs it for 45 s with a random seed.
MINUTES ?= 30
SEED ?=
chaos: deps
	CHAOS_MINUTES=$(MINUTES) CHAOS_SEED=$(SEED) cargo test --release -p etcd-lite \
		--test linearizability chaos -- --nocapture

lint:
	cargo fmt --all --check && cargo clippy --workspace --all-targets -- -D warnings

# What the image ships: rkt linked statically (glibc, libseccomp), small and quick to start.
DIST_TARGET := x86_64-unknown-linux-gnu
dist: deps
	RUSTFLAGS="-C target-feature=+crt-static" LIBSECCOMP_LINK_TYPE=static \
	LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
	cargo build --profile dist --target $(DIST_TARGET) -p rkt-runtime --bin rkt

# The bootable image (kernel + initrd, raw and qcow2 disks) in target/image.
image: build dist
	./image/build.sh target/image

bench: build dist image
	./target/release/etcd-bench compare
	./target/release/etcd-bench compare-cluster
	./target/release/etcd-bench compare-backup
	./target/release/rkt-bench --rkt target/$(DIST_TARGET)/dist/rkt
	./target/release/pod-bench --rkt target/$(DIST_TARGET)/dist/rkt
	./target/release/fleet-bench --etcd-lite target/release/etcd-lite --machines 100 --units 10000
	BENCH=1 ./scripts/demo.sh

demo: image
	./scripts/demo.sh

demo-down:
	./scripts/demo.sh down

clean:
	cargo clean
