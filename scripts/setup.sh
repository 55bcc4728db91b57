#!/usr/bin/env bash
# Idempotent set-up for building and testing cgroup-connect on a fresh machine:
#   - the stable toolchain's rustfmt and clippy, and a check that it is new enough,
#   - a nightly toolchain with rust-src (the BPF crate is built with -Z build-std=core) and
#     clippy (it is linted for the BPF target),
#   - bpf-linker, built against the nightly toolchain's own libLLVM,
#   - the apt packages the tests, the packaging checks and the benchmarks use.
# Each step checks first and does nothing when its result is already there.
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }

# Where the libLLVM links for bpf-linker live. bpf-linker's rpath points here, so it must last.
LLVM_LINK_DIR=${LLVM_LINK_DIR:-${CARGO_HOME:-$HOME/.cargo}/bpf-linker-llvm}
BPF_LINKER_VERSION=${BPF_LINKER_VERSION:-0.13}
# python3-jsonschema and python3-prometheus-client: tests/formats.rs checks the JSON outputs
# against docs/schemas and parses /metrics with them. podman, runc and busybox-static:
# tests/containers.rs runs a real container (runc, not crun: crun refuses hybrid cgroup hosts).
# systemd (systemd-analyze), man-db, groff-base, zsh and fish: scripts/check-packaging.sh.
APT_PACKAGES=(iproute2 bpftool nftables iptables ipset python3-jsonschema python3-prometheus-client
    podman runc busybox-static systemd man-db groff-base zsh fish dnsmasq-base)

need_root_for_apt() {
    if [[ $(id -u) -ne 0 ]]; then
        log "not root: skipping apt packages (${APT_PACKAGES[*]}); run as root to install them"
        return 1
    fi
}

install_apt() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "apt packages present"
        return
    fi
    need_root_for_apt || return 0
    log "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# The stable toolchain builds the userspace crates (rust-version in Cargo.toml); test.sh runs
# its rustfmt and clippy.
install_stable_components() {
    local need have component
    need=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
    have=$(rustc --version | cut -d' ' -f2)
    if [[ $(printf '%s\n%s\n' "$need" "${have%%-*}" | sort -V | head -n1) != "$need" ]]; then
        log "error: rustc $have is older than $need (rust-version): rustup update stable"
        exit 1
    fi
    for component in rustfmt clippy; do
        if ! rustup component list --installed | grep -q "^$component"; then
            log "adding $component to the default toolchain"
            rustup component add "$component"
        else
            log "rustc $have with $component present"
        fi
    done
}

install_nightly() {
    if ! rustup toolchain list | grep -q '^nightly'; then
        log "installing the nightly toolchain"
        rustup toolchain install nightly --profile minimal
    fi
    # clippy: scripts/test.sh lints the BPF crate for its own target.
    local component
    for component in rust-src clippy; do
        if ! rustup component list --toolchain nightly --installed | grep -q "^$component"; then
            log "adding $component to nightly"
            rustup component add "$component" --toolchain nightly
        else
            log "nightly with $component present"
        fi
    done
}

install_bpf_linker() {
    local sysroot llvm
    sysroot=$(rustc +nightly --print sysroot)
    llvm=$(find "$sysroot/lib" -maxdepth 1 -name 'libLLVM.so.*-rust-*' | head -n1)
    if [[ -z $llvm ]]; then
        log "error: no libLLVM.so.*-rust-* in $sysroot/lib; reinstall the nightly toolchain"
        exit 1
    fi
    mkdir -p "$LLVM_LINK_DIR/lib"
    ln -sfn "$llvm" "$LLVM_LINK_DIR/lib/libLLVM.so"
    ln -sfn "$llvm" "$LLVM_LINK_DIR/lib/$(basename "$llvm")"
    if command -v bpf-linker >/dev/null && bpf-linker --version >/dev/null 2>&1; then
        log "bpf-linker present: $(bpf-linker --version)"
        return
    fi
    local major
    major=$(basename "$llvm" | sed -E 's/^libLLVM\.so\.([0-9]+).*/\1/')
    log "building bpf-linker $BPF_LINKER_VERSION against $llvm (about a minute)"
    LLVM_PREFIX="$LLVM_LINK_DIR" cargo +stable install --locked bpf-linker \
        --version "~$BPF_LINKER_VERSION" --no-default-features --features "llvm-$major"
}

cd "$(dirname "$0")/.."
install_apt
install_stable_components
install_nightly
install_bpf_linker
log "done"
