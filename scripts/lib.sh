# Shared by the scripts: finds cargo (also under sudo, which drops ~/.cargo/bin from PATH)
# and stops with a clear message when a step needs root.
# shellcheck shell=bash
ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for home in "${CARGO_HOME:-}" "$HOME/.cargo" "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo}"; do
    if [[ -n $home && -x $home/bin/cargo ]] && ! command -v cargo >/dev/null; then
        export PATH="$home/bin:$PATH"
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
