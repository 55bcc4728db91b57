#!/usr/bin/env bash
# Installs what goes beside the blocker binary, all made by the binary itself from its clap
# definitions, so they match its flags: shell completions for bash, zsh and fish, the man pages
# (blocker(1) and blocker-VERB(1)), and the README the systemd unit's Documentation= names.
#   PREFIX   where to install (default /usr/local)
#   DESTDIR  a staging root, for packages (default: none)
#   BLOCKER  the binary to ask (default target/release/blocker; built when missing)
# It does not install the binary or the unit: see the README, "Running it under systemd".
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
BLOCKER=${BLOCKER:-$ROOT_DIR/target/release/blocker}
if [[ ! -x $BLOCKER ]]; then
    "$ROOT_DIR/scripts/build.sh"
fi
share=$DESTDIR$PREFIX/share
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$BLOCKER" completions bash >"$tmp/blocker.bash"
"$BLOCKER" completions zsh >"$tmp/_blocker"
"$BLOCKER" completions fish >"$tmp/blocker.fish"
"$BLOCKER" manpages "$tmp/man" >/dev/null

install -D -m 0644 "$tmp/blocker.bash" "$share/bash-completion/completions/blocker"
install -D -m 0644 "$tmp/_blocker" "$share/zsh/site-functions/_blocker"
install -D -m 0644 "$tmp/blocker.fish" "$share/fish/vendor_completions.d/blocker.fish"
for page in "$tmp"/man/*.1; do
    install -D -m 0644 "$page" "$share/man/man1/$(basename "$page")"
done
install -D -m 0644 "$ROOT_DIR/README.md" "$share/doc/cgroup-connect/README.md"
echo "installed completions (bash, zsh, fish), $(ls "$tmp"/man | wc -l) man pages and the README under $share"
