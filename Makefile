# corelite: one-line targets; logic lives in scripts/ and Rust.
.PHONY: deps build test lint bench demo clean

deps:
	./scripts/deps.sh

build: deps
	cargo build --release --workspace

test: deps
	cargo test --workspace --release -- --test-threads=4

lint:
	cargo fmt --all --check && cargo clippy --workspace --all-targets -- -D warnings

bench: build
	cargo build --profile dist -p rkt-runtime --bin rkt
	./target/release/etcd-bench compare
	./target/release/rkt-bench --rkt target/dist/rkt

demo: build
	./scripts/demo.sh

clean:
	cargo clean
