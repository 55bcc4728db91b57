#!/bin/sh
# PID 1 of a kernel-matrix guest (busybox sh in an initramfs built by kernel-matrix.sh):
# mounts what the blocker and its tests need, loads the listed modules, runs suite.sh, and
# powers off. The host reads the MATRIX-RESULT line from the serial console.
export PATH=/usr/sbin:/usr/bin HOME=/root TMPDIR=/tmp CI=true RUST_BACKTRACE=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# /tmp stays the initramfs' own folder (writable already): a tmpfs over it would hide a
# checkout that sits in /tmp, such as one in a `mktemp -d` folder.
mkdir -p /tmp
chmod 1777 /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
# As systemd mounts it: the list of active LSMs (/sys/kernel/security/lsm) tells the blocker
# whether BPF LSM runs; without it, it cannot tell and uses the egress fallback.
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
ip link set lo up
while read -r module; do
    insmod "$module" || echo "kernel-matrix: insmod $module failed"
done </matrix/modules
cd /tmp || exit 1
# shellcheck disable=SC2046 # one test binary a line, paths without spaces
/matrix/suite.sh "$(cat /matrix/blocker)" $(cat /matrix/tests)
echo "MATRIX-EXIT $?"
# MATRIX_BENCH=1 on the host: the packet checks' benchmark, after the suite (relative figures:
# TCG). Its status does not change the result.
if [ -s /matrix/bench ]; then
    echo "MATRIX-BENCH start"
    "$(cat /matrix/bench)" --quick --packets-only --blocker "$(cat /matrix/blocker)"
    echo "MATRIX-BENCH exit $?"
fi
sync
poweroff -f
