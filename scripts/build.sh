#!/usr/bin/env bash
# Release build: the BPF programs (nightly + bpf-linker, -C target-cpu=$BPF_CPU) embedded in
# target/release/blocker. BPF_CPU (default v3) picks the BPF instruction set, as in the seed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT_DIR"
export BPF_CPU=${BPF_CPU:-v3}
cargo build --release --locked
echo "built $ROOT_DIR/target/release/blocker (BPF_CPU=$BPF_CPU)"
