#!/usr/bin/env bash
# Checks what is shipped beside the binary (run by scripts/test.sh; needs no root):
#   - the systemd unit: `systemd-analyze verify`, and `systemd-analyze security --offline=yes`
#     with an exposure of at most 2.5, no restart on exit 2 or 3;
#   - the completions: each parses in its shell (bash -n, zsh -n, fish -n) and names every verb;
#   - the man pages: groff renders each without a warning, and blocker(1) lists every verb;
#   - scripts/install-extras.sh puts each file where the shells and man look for it.
# BLOCKER names the binary (default target/release/blocker).
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BLOCKER=${BLOCKER:-$ROOT_DIR/target/release/blocker}
UNIT=$ROOT_DIR/contrib/systemd/cgroup-connect@.service
MAX_EXPOSURE=2.5
VERBS=(run add remove list reload detach status events stats doctor)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
    echo "check-packaging: FAIL: $*" >&2
    exit 1
}
ok() { echo "check-packaging: ok: $*"; }

for tool in systemd-analyze bash zsh fish groff man; do
    command -v "$tool" >/dev/null || fail "$tool is missing: run ./scripts/setup.sh as root"
done
[[ -x $BLOCKER ]] || fail "no $BLOCKER: run ./scripts/build.sh"

# The unit, with ExecStart pointing at this build (verify wants the program to exist) and the
# man pages of this build on MANPATH (verify checks Documentation=man:blocker(1)).
"$BLOCKER" manpages "$tmp/man/man1" >/dev/null
mkdir "$tmp/unit"
sed "s|/usr/local/bin/blocker|$BLOCKER|" "$UNIT" >"$tmp/unit/cgroup-connect@.service"
instance=$tmp/unit/cgroup-connect@check.service
if ! out=$(MANPATH=$tmp/man systemd-analyze verify "$instance" 2>&1) || [[ -n $out ]]; then
    fail "systemd-analyze verify: $out"
fi
ok "systemd-analyze verify"
security=$(systemd-analyze security --offline=yes --threshold=25 "$instance" 2>&1) ||
    fail "systemd-analyze security: exposure above $MAX_EXPOSURE: $(tail -n 25 <<<"$security")"
exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$security")
[[ -n $exposure ]] || fail "no exposure level in: $security"
awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }' ||
    fail "exposure $exposure above $MAX_EXPOSURE"
ok "systemd-analyze security: exposure $exposure (at most $MAX_EXPOSURE)"
# That the bound is what the blocker checks for: a unit test in src/privileges.rs.
bound=$(sed -n 's/^CapabilityBoundingSet=//p' "$UNIT")
for line in 'RestartPreventExitStatus=2 3' 'NoNewPrivileges=yes' 'ProtectSystem=strict' \
    'SystemCallArchitectures=native' 'Type=notify'; do
    grep -qxF "$line" "$UNIT" || fail "the unit lacks $line"
done
grep -q '^Wants=.*network-pre.target' "$UNIT" || fail "the unit does not want network-pre.target"
ok "unit: capabilities $bound, no restart on exit 2 or 3"

# Completions.
"$BLOCKER" completions bash >"$tmp/blocker.bash"
"$BLOCKER" completions zsh >"$tmp/_blocker"
"$BLOCKER" completions fish >"$tmp/blocker.fish"
bash -n "$tmp/blocker.bash" || fail "bash completion does not parse"
zsh -n "$tmp/_blocker" || fail "zsh completion does not parse"
fish --no-execute "$tmp/blocker.fish" || fail "fish completion does not parse"
for file in "$tmp/blocker.bash" "$tmp/_blocker" "$tmp/blocker.fish"; do
    for word in "${VERBS[@]}" verifier-log block-list; do
        grep -q -- "$word" "$file" || fail "$(basename "$file") does not complete $word"
    done
done
ok "completions parse in bash, zsh and fish, and name every verb"

# Man pages.
for page in "$tmp"/man/man1/*.1; do
    warnings=$(groff -man -ww -z "$page" 2>&1) || fail "groff: $page: $warnings"
    [[ -z $warnings ]] || fail "groff warns on $(basename "$page"): $warnings"
done
for verb in "${VERBS[@]}"; do
    [[ -s $tmp/man/man1/blocker-$verb.1 ]] || fail "no man page blocker-$verb.1"
    MANPATH=$tmp/man man -P cat blocker 2>/dev/null | grep -q "blocker-$verb(1)\|^ *$verb" ||
        fail "blocker(1) does not list $verb"
done
MANPATH=$tmp/man man -P cat blocker-run 2>/dev/null | grep -q "Exit codes:" ||
    fail "blocker-run(1) lacks the exit codes"
ok "man pages render without warnings; blocker(1) lists every verb"

# The installer.
DESTDIR=$tmp/dest PREFIX=/usr BLOCKER=$BLOCKER "$ROOT_DIR/scripts/install-extras.sh" >/dev/null
for file in share/bash-completion/completions/blocker share/zsh/site-functions/_blocker \
    share/fish/vendor_completions.d/blocker.fish share/man/man1/blocker.1 \
    share/man/man1/blocker-run.1 share/doc/cgroup-connect/README.md; do
    [[ -s $tmp/dest/usr/$file ]] || fail "install-extras.sh did not install /usr/$file"
    [[ $(stat -c %a "$tmp/dest/usr/$file") == 644 ]] || fail "/usr/$file is not mode 0644"
done
ok "install-extras.sh installs the completions, man pages and README"
