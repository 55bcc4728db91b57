#!/usr/bin/env bash
# Set-up, build, and every test: formatting, clippy, unit tests, and the integration tests
# that load BPF programs on this kernel (these need root; under CI=true they never skip).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT_DIR"
if [[ $(id -u) -ne 0 ]]; then
    if [[ ${CI:-} == true ]]; then
        echo "error: CI=true and not root: the privileged tests would skip" >&2
        exit 1
    fi
    echo "warning: not root: privileged tests will skip (run: sudo ./scripts/test.sh)" >&2
fi
./scripts/setup.sh
cargo fmt --all --check
./scripts/build.sh
cargo clippy --release --locked --all-targets -- -D warnings
# The BPF crate builds only for the BPF target, with the toolchain build.rs uses.
rustup run "${BPF_TOOLCHAIN:-nightly}" cargo clippy --package cgroup-connect-ebpf --release \
    --locked --target bpfel-unknown-none -Z build-std=core --target-dir target/bpf-clippy \
    -- -D warnings
cargo test --release --locked
