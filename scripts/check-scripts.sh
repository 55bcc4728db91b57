#!/usr/bin/env bash
# Checks the set-up scripts themselves (run by scripts/test.sh, as root):
#   - lib.sh under sudo finds the invoking user's rustup: cargo on PATH and RUSTUP_HOME, from
#     a user made up for the check (in a private mount namespace, with its own /etc/passwd);
#   - run.sh prints a one-line command that shows the block, and that command fails with
#     EPERM ("Operation not permitted") while run.sh runs, on a temporary cgroup.
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fail() {
    echo "check-scripts: FAIL: $*" >&2
    exit 1
}
ok() { echo "check-scripts: ok: $*"; }
if [[ $(id -u) -ne 0 ]]; then
    [[ ${CI:-} == true ]] && fail "CI=true and not root"
    echo "check-scripts: skipped: needs root (unshare, cgroups)" >&2
    exit 0
fi
tmp=$(mktemp -d)
cgroup=
blocker_pid=
cleanup() {
    if [[ -n $blocker_pid ]] && kill -0 "$blocker_pid" 2>/dev/null; then
        kill -INT "$blocker_pid"
        for _ in $(seq 50); do kill -0 "$blocker_pid" 2>/dev/null || break; sleep 0.1; done
    fi
    [[ -n $cgroup ]] && rmdir "$cgroup" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

# lib.sh under sudo: root's HOME has no Rust; the invoking user's has cargo and .rustup.
user_home=$tmp/home/cgc-user
mkdir -p "$user_home/.cargo/bin" "$user_home/.rustup" "$tmp/roothome"
printf '#!/bin/sh\necho fake cargo\n' >"$user_home/.cargo/bin/cargo"
chmod +x "$user_home/.cargo/bin/cargo"
cp /etc/passwd "$tmp/passwd"
echo "cgc-user:x:4242:4242::$user_home:/bin/sh" >>"$tmp/passwd"
found=$(unshare -m bash -c '
    mount --make-rprivate / && mount --bind "$1" /etc/passwd &&
    env -i HOME="$2" SUDO_USER=cgc-user PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        bash -c "source \"\$0\"; echo \"\$(command -v cargo) \$RUSTUP_HOME\"" "$3"
' _ "$tmp/passwd" "$tmp/roothome" "$ROOT_DIR/scripts/lib.sh")
[[ $found == "$user_home/.cargo/bin/cargo $user_home/.rustup" ]] ||
    fail "lib.sh under sudo found \"$found\", not the invoking user's cargo and rustup"
ok "lib.sh under sudo finds the invoking user's cargo and RUSTUP_HOME"

# run.sh's one line that shows the block.
root=$(findmnt -n -t cgroup2 -o TARGET | head -n1)
[[ -n $root ]] || fail "no cgroup v2 mount"
cgroup=$root/cgroup-connect-check-scripts-$$
mkdir "$cgroup"
name=check-scripts-$$
CGROUP=$cgroup BLOCK_IP=127.0.0.2 "$ROOT_DIR/scripts/run.sh" --name "$name" >"$tmp/run.out" 2>&1 &
blocker_pid=$!
for _ in $(seq 600); do
    grep -q '^attached' "$tmp/run.out" && break
    kill -0 "$blocker_pid" 2>/dev/null || fail "run.sh exited: $(cat "$tmp/run.out")"
    sleep 0.5
done
grep -q '^attached' "$tmp/run.out" || fail "run.sh did not attach within 5 minutes"
probe=$(sed -n 's/^once attached, see the block from another terminal: \(.*\)  (bash: connect: Operation not permitted)$/\1/p' "$tmp/run.out")
[[ -n $probe ]] || fail "run.sh printed no line to see the block: $(cat "$tmp/run.out")"
command -v sudo >/dev/null || probe=${probe#sudo }
out=$(timeout 10 bash -c "$probe" 2>&1) && fail "the probe connected: $probe"
[[ $out == *"Operation not permitted"* ]] || fail "the probe failed otherwise: $probe: $out"
ok "run.sh prints a line that shows the block: $probe"
