#!/usr/bin/env bash
# A static blocker (musl) for the container image (deploy/Containerfile):
#   target/x86_64-unknown-linux-musl/release/blocker
# Installs the musl target of the stable toolchain if it is missing; the BPF object is built
# and embedded as in build.sh.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT_DIR"
target=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$target"; then
    echo "build-static: adding the $target target"
    rustup target add "$target"
fi
export BPF_CPU=${BPF_CPU:-v3}
cargo build --release --locked --target "$target" -p cgroup-connect --bin blocker
bin=target/$target/release/blocker
# Static (no program interpreter, no dynamic library), or the image (FROM scratch) could not run it.
python3 - "$bin" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
phoff, = struct.unpack_from("<Q", data, 0x20)
phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
kinds = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
if 3 in kinds:  # PT_INTERP
    sys.exit(f"build-static: {sys.argv[1]} needs a program interpreter: it is not static")
PY
echo "built $ROOT_DIR/$bin (static)"
