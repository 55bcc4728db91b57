#!/usr/bin/env bash
# Sets up and builds when needed, then runs the blocker until Ctrl+C.
#   BLOCK_IP  addresses to block, separated by spaces or commas (default 93.184.216.34)
#   CGROUP    cgroup v2 directory to attach to (default: the root of the cgroup v2 mount,
#             i.e. the whole machine)
# Extra arguments go to `blocker run`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
require_root "run.sh"
cd "$ROOT_DIR"
if ! command -v bpf-linker >/dev/null || ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    ./scripts/setup.sh
fi
if [[ ! -x target/release/blocker ]] || [[ -n $(find cgroup-connect* Cargo.toml Cargo.lock -newer target/release/blocker -print -quit) ]]; then
    ./scripts/build.sh
fi
args=()
for ip in ${BLOCK_IP:-93.184.216.34}; do
    IFS=, read -ra parts <<<"$ip"
    for p in "${parts[@]}"; do [[ -n $p ]] && args+=(--block-ip "$p"); done
done
[[ -n ${CGROUP:-} ]] && args+=(--cgroup "$CGROUP")
# One line to see the block from another terminal: a TCP connect that fails with EPERM
# ("bash: connect: Operation not permitted"), from inside CGROUP when one is given.
ip=${args[1]%%/*}
if [[ -n ${CGROUP:-} ]]; then
    probe="sudo sh -c 'echo \$\$ >$CGROUP/cgroup.procs && exec bash -c \": </dev/tcp/$ip/80\"'"
else
    probe="bash -c ': </dev/tcp/$ip/80'"
fi
echo "once attached, see the block from another terminal: $probe  (bash: connect: Operation not permitted)"
exec target/release/blocker run "${args[@]}" "$@"
