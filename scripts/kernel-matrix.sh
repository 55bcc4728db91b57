#!/usr/bin/env bash
# The real-kernel tests on several kernels: `blocker doctor` and every integration test binary,
# on Debian's cloud kernels booted under qemu (TCG) from an initramfs that holds the release
# build, the test binaries (at the paths they were built for) and the tools they run; and on
# this machine's kernel, natively. One summary line per kernel; exit status 1 if any failed.
#
# Usage: sudo ./scripts/kernel-matrix.sh [KERNEL...]
#   KERNEL: a Debian kernel series (6.1, 6.12: the newest linux-image-<series>...-cloud-amd64
#   apt can download), an exact linux-image-... package name, or `host`.
#   Default: 6.1 6.12 host.
# Environment: KERNEL_MATRIX_CACHE (default target/kernel-matrix: downloaded kernels, initramfs,
#   logs), VM_TIMEOUT (seconds per VM, default 1500: the 6.1 suite takes 9-11 minutes under TCG on 2 loaded cores), VM_CPUS (2), VM_MEMORY (2G),
#   MATRIX_TESTS (names of the test binaries to run, such as "bypass start"; default: all;
#   `blocker doctor` always runs), MATRIX_BENCH=1 (then, in each guest, also
#   `cgroup-connect-bench --quick --packets-only`: relative figures under TCG; off by default,
#   not in CI).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT_DIR"
require_root "the kernel matrix (apt-get, and BPF on the host kernel)"

cache=${KERNEL_MATRIX_CACHE:-$ROOT_DIR/target/kernel-matrix}
vm_timeout=${VM_TIMEOUT:-1500}
guest_dir=$ROOT_DIR/scripts/kernel-matrix
mkdir -p "$cache/logs"
if [[ $# -eq 0 ]]; then
    set -- 6.1 6.12 host
fi

# Installs what the matrix needs and this machine lacks.
ensure_packages() {
    local missing=() pair
    for pair in qemu-system-x86_64:qemu-system-x86 cpio:cpio jq:jq xz:xz-utils \
        depmod:kmod bpftool:bpftool ip:iproute2 nft:nftables setpriv:util-linux; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    # The guest's sh and coreutils: a static busybox, which runs without libraries.
    [[ $(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null) == *' ok installed' ]] ||
        missing+=(busybox-static)
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "kernel-matrix: installing ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# The newest downloadable linux-image package of a series such as 6.1 or 6.12.
resolve_package() {
    local series=$1 re pkg
    if [[ $series == linux-image-* ]]; then
        echo "$series"
        return
    fi
    re="^linux-image-${series//./\\.}\.[0-9]+(-[0-9]+|\+deb[0-9]+)-cloud-amd64\$"
    for pkg in $(apt-cache pkgnames linux-image- | grep -E "$re" | sort -rV); do
        if [[ $(apt-cache policy "$pkg") == *'Candidate: '[0-9]* ]]; then
            echo "$pkg"
            return
        fi
    done
    echo "kernel-matrix: apt has no cloud kernel of series $series (apt-get update?)" >&2
    return 1
}

# Downloads and unpacks a kernel package once; prints the folder it is unpacked in.
fetch_kernel() {
    local pkg=$1 dir=$cache/kernels/$1
    if [[ ! -d $dir/boot ]]; then
        mkdir -p "$cache/kernels"
        # As root into root's folder: no _apt sandbox. Lists older than the archive name a
        # package it no longer serves: update them once and try again.
        if ! (cd "$cache/kernels" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2); then
            apt-get update -q >&2
            (cd "$cache/kernels" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2)
        fi
        dpkg-deb -x "$cache/kernels/${pkg}"_*.deb "$dir.tmp"
        rm -f "$cache/kernels/${pkg}"_*.deb
        mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

# Copies a file into the staging root at the same path, with the symlinks that lead to it.
stage_file() {
    local root=$1 path=$2 target
    while [[ -L $path ]]; do
        mkdir -p "$root$(dirname "$path")"
        ln -sfn "$(readlink "$path")" "$root$path"
        target=$(readlink "$path")
        [[ $target == /* ]] || target=$(dirname "$path")/$target
        path=$target
    done
    [[ -e $root$path ]] && return
    mkdir -p "$root$(dirname "$path")"
    cp "$path" "$root$path"
}

# Copies an executable and the shared libraries it loads.
stage_elf() {
    local root=$1 exe=$2 lib
    stage_file "$root" "$exe"
    for lib in $(ldd "$exe" 2>/dev/null | grep -oE '/[^ ]+' || true); do
        stage_file "$root" "$lib"
    done
}

# The archive every guest shares: busybox, the tools, the blocker, the test binaries.
build_common_cpio() {
    local out=$1 root=$cache/root applet tool test
    rm -rf "$root"
    mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib,usr/lib64,proc,sys,dev,tmp,run,root,etc,matrix}
    # Debian's merged /usr, so that paths from ldd and the host resolve the same way.
    for link in bin sbin lib lib64; do
        ln -s "usr/$link" "$root/$link"
    done
    cp "$(command -v busybox)" "$root/usr/bin/busybox"
    for applet in sh mount umount mkdir cat echo ls poweroff insmod uname sleep awk sed grep \
        head tail basename dirname rm ln cp env id sync dmesg ps kill timeout true date; do
        ln -s busybox "$root/usr/bin/$applet"
    done
    for tool in ip bpftool nft setpriv; do
        stage_elf "$root" "$(command -v "$tool")"
    done
    stage_elf "$root" "$BLOCKER"
    for test in "${TESTS[@]}"; do
        stage_elf "$root" "$test"
    done
    # The files the tests read (sample lists), at the paths the tests were built with.
    mkdir -p "$root$ROOT_DIR/cgroup-connect/tests"
    cp -r "$ROOT_DIR/cgroup-connect/tests/data" "$root$ROOT_DIR/cgroup-connect/tests/data"
    cp "$guest_dir/init.sh" "$root/init"
    cp "$guest_dir/suite.sh" "$root/matrix/suite.sh"
    echo "$BLOCKER" >"$root/matrix/blocker"
    printf '%s\n' "${TESTS[@]}" >"$root/matrix/tests"
    if [[ ${MATRIX_BENCH:-0} == 1 ]]; then
        stage_elf "$root" "$ROOT_DIR/target/release/cgroup-connect-bench"
        echo "$ROOT_DIR/target/release/cgroup-connect-bench" >"$root/matrix/bench"
    fi
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' \
        >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
    # No network: a resolver that answers nothing, at once.
    printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$root/etc/resolv.conf"
    (cd "$root" && find . | cpio -o -H newc --quiet) >"$out"
}

# The archive of one kernel's modules (nf_tables for nft, veth, with what they depend on),
# decompressed, and the order to load them in.
build_modules_cpio() {
    local kdir=$1 out=$2 kver root=$cache/modules-root list=()
    kver=$(ls "$kdir/lib/modules")
    local mdir=$kdir/lib/modules/$kver
    # A package ships no modules.dep: its postinst runs depmod.
    [[ -s $mdir/modules.dep ]] || depmod -b "$kdir" "$kver"
    add_module() {
        local rel=$1 dep
        [[ " ${list[*]} " == *" $rel "* ]] && return
        for dep in $(grep -E "^${rel//+/\\+}:" "$mdir/modules.dep" | cut -d: -f2); do
            add_module "$dep"
        done
        list+=("$rel")
    }
    add_module "$(grep -oE '^[^:]*/nf_tables\.ko(\.xz|\.zst)?' "$mdir/modules.dep")"
    # veth, for the packet checks' tests (a wire between two namespaces), unless built in.
    local veth
    veth=$(grep -oE '^[^:]*/veth\.ko(\.xz|\.zst)?' "$mdir/modules.dep" || true)
    [[ -z $veth ]] || add_module "$veth"
    rm -rf "$root"
    mkdir -p "$root/matrix"
    : >"$root/matrix/modules"
    for rel in "${list[@]}"; do
        # Under usr/: an entry ./lib in this archive would replace the /lib -> usr/lib link.
        local dest=$root/usr/lib/modules/$kver/${rel%.xz}
        mkdir -p "$(dirname "$dest")"
        case $rel in
        *.xz) xz -dc "$mdir/$rel" >"$dest" ;;
        *) cp "$mdir/$rel" "$dest" ;;
        esac
        echo "/usr/lib/modules/$kver/${rel%.xz}" >>"$root/matrix/modules"
    done
    (cd "$root" && find . | cpio -o -H newc --quiet) >"$out"
}

# Boots a kernel with the initramfs, its serial console on stdout and in the log; returns
# qemu's status (124 on timeout).
boot() {
    local vmlinuz=$1 initrd=$2 log=$3
    # tsc=reliable: under TCG, 6.1 finds the TSCs unsynchronized and falls back to the HPET,
    # whose every read is an emulated MMIO access (the suite took 7% longer).
    timeout --kill-after=10 "$vm_timeout" qemu-system-x86_64 -accel tcg -cpu max \
        -smp "${VM_CPUS:-2}" -m "${VM_MEMORY:-2G}" -nodefaults -display none -no-reboot \
        -serial stdio -monitor none -kernel "$vmlinuz" -initrd "$initrd" \
        -append "console=ttyS0 rdinit=/init panic=-1 oops=panic quiet tsc=reliable" </dev/null |
        tee "$log"
    return "${PIPESTATUS[0]}"
}

# Boots one kernel; adds its summary line; returns its status.
run_vm() {
    local name=$1 kdir=$2 vmlinuz initrd log start rc=0 result
    vmlinuz=$(ls "$kdir"/boot/vmlinuz-*)
    initrd=$cache/initrd-$name.cpio
    log=$cache/logs/$name.log
    build_modules_cpio "$kdir" "$cache/modules-$name.cpio"
    cat "$cache/common.cpio" "$cache/modules-$name.cpio" >"$initrd"
    echo "kernel-matrix: booting $name under qemu (TCG; log: $log)"
    start=$SECONDS
    boot "$vmlinuz" "$initrd" "$log" || rc=$?
    if ! grep -aq '^MATRIX-' "$log"; then
        # The guest died before its init printed anything: a boot failure, not a test one.
        echo "kernel-matrix: $name never reached its init (qemu exit $rc); booting it once more"
        mv "$log" "$log.first"
        rc=0
        boot "$vmlinuz" "$initrd" "$log" || rc=$?
    fi
    result=$(grep -a '^MATRIX-RESULT' "$log" | tail -1 | tr -d '\r')
    if [[ -z $result ]]; then
        [[ $rc -eq 124 ]] && result="timed out after ${vm_timeout}s" || result="no result (qemu exit $rc)"
        SUMMARY+=("$name: FAIL: $result, $((SECONDS - start))s in all")
        return 1
    fi
    SUMMARY+=("$name: ${result#MATRIX-RESULT }, $((SECONDS - start))s in all")
    [[ $result == *' status=0 '* ]]
}

run_host() {
    local log=$cache/logs/host.log result status
    echo "kernel-matrix: running on this machine's kernel $(uname -r) (log: $log)"
    set +e
    CI=true "$guest_dir/suite.sh" "$BLOCKER" "${TESTS[@]}" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    result=$(grep '^MATRIX-RESULT' "$log" | tail -1)
    SUMMARY+=("host: ${result#MATRIX-RESULT }")
    return "$status"
}

ensure_packages
# As build.sh sets it: a different value would make `cargo test` rebuild the blocker.
export BPF_CPU=${BPF_CPU:-v3}
./scripts/build.sh
BLOCKER=$ROOT_DIR/target/release/blocker
# The integration tests of the userspace crate: the ones that load programs. Not those that
# need what the guests lack: formats checks the output formats with Python, containers runs a
# container runtime, deploy reads the Kubernetes manifests (none depends on the kernel); dns
# runs dnsmasq and Python's resolver (its programs load in every other test binary); they run
# on the host, in `cargo test`.
mapfile -t TESTS < <(cargo test --release --locked -p cgroup-connect --no-run \
    --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .target.kind == ["test"])
        | select(.target.name | IN("formats", "containers", "deploy", "dns") | not) | .executable')
if [[ ${#TESTS[@]} -eq 0 ]]; then
    echo "error: cargo built no integration test binaries" >&2
    exit 1
fi
if [[ -n ${MATRIX_TESTS:-} ]]; then
    # Only the named binaries (cargo names them NAME-HASH).
    wanted=()
    for name in $MATRIX_TESTS; do
        found=false
        for test in "${TESTS[@]}"; do
            base=$(basename "$test")
            if [[ ${base%-*} == "$name" ]]; then
                wanted+=("$test")
                found=true
            fi
        done
        $found || {
            echo "error: MATRIX_TESTS names $name, which is no integration test binary" >&2
            exit 1
        }
    done
    TESTS=("${wanted[@]}")
fi

SUMMARY=()
failed=0
common_built=false
for kernel in "$@"; do
    if [[ $kernel == host ]]; then
        run_host || failed=1
        continue
    fi
    if ! $common_built; then
        build_common_cpio "$cache/common.cpio"
        common_built=true
    fi
    pkg=$(resolve_package "$kernel" 2>/dev/null) ||
        pkg=$(apt-get update -q >&2 && resolve_package "$kernel") || {
        SUMMARY+=("$kernel: FAIL: no package")
        failed=1
        continue
    }
    kdir=$(fetch_kernel "$pkg")
    run_vm "${pkg#linux-image-}" "$kdir" || failed=1
done
echo
echo "kernel-matrix summary:"
printf '  %s\n' "${SUMMARY[@]}"
exit "$failed"
