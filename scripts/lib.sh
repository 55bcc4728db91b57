# Shared by the scripts: finds cargo and rustup's toolchains (also under sudo, which drops
# ~/.cargo/bin from PATH and leaves rustup looking in root's ~/.rustup) and stops with a clear
# message when a step needs root.
# shellcheck shell=bash
ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Where rustup may be, in order: CARGO_HOME/RUSTUP_HOME as set, this user's, the invoking
# user's under sudo. Each is "CARGO_HOME RUSTUP_HOME".
sudo_home=${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)}
for homes in "${CARGO_HOME:-} ${RUSTUP_HOME:-$HOME/.rustup}" "$HOME/.cargo $HOME/.rustup" \
    "${sudo_home:+$sudo_home/.cargo $sudo_home/.rustup}"; do
    read -r cargo_home rustup_home <<<"$homes"
    if [[ -n $cargo_home && -x $cargo_home/bin/cargo ]] && ! command -v cargo >/dev/null; then
        export PATH="$cargo_home/bin:$PATH"
        # rustup's proxies (cargo, rustc) find their toolchains through RUSTUP_HOME.
        if [[ -z ${RUSTUP_HOME:-} && -d $rustup_home ]]; then
            export RUSTUP_HOME=$rustup_home
        fi
    fi
done
if ! command -v cargo >/dev/null; then
    echo "error: cargo not found: install Rust with rustup (https://rustup.rs) for this user" >&2
    exit 1
fi

require_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: $1 needs root: run it with sudo" >&2
        exit 1
    fi
}
