#!/usr/bin/env bash
# Set-up, build, and every test: formatting, clippy, unit tests, the integration tests that
# load BPF programs on this kernel (these need root; under CI=true they never skip), the
# packaging and script checks (scripts/check-packaging.sh, check-scripts.sh), then the
# same integration tests on the other kernels of the matrix (scripts/kernel-matrix.sh), each
# booted under qemu. KERNELS picks them (default "6.1 6.12"); KERNELS=none skips the matrix
# with a word, except under CI=true.
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
# The Kubernetes manifests against Kubernetes' schemas, and the static binary of the image.
./scripts/check-deploy.sh
# The unit (systemd-analyze verify and security), completions, man pages, install-extras.sh.
./scripts/check-packaging.sh
# lib.sh under sudo, and run.sh's line that shows the block (root).
./scripts/check-scripts.sh
kernels=${KERNELS:-6.1 6.12}
if [[ $kernels == none ]]; then
    if [[ ${CI:-} == true ]]; then
        echo "error: CI=true and KERNELS=none: the kernel matrix must run in CI" >&2
        exit 1
    fi
    echo "warning: KERNELS=none: the kernel matrix is skipped (it tests 6.1 and 6.12 under qemu)" >&2
elif [[ $(id -u) -ne 0 ]]; then
    echo "warning: not root: the kernel matrix is skipped (it needs apt-get and qemu)" >&2
else
    # shellcheck disable=SC2086 # one word a kernel
    ./scripts/kernel-matrix.sh $kernels
fi
