#!/bin/sh
# The real-kernel checks of one kernel: `blocker doctor`, then each privileged test binary.
# Runs as the guest's PID 1 (from init.sh) or on the host; POSIX sh, so busybox runs it too.
# Usage: suite.sh BLOCKER TEST_BINARY...
# Prints one line per step and a last line
#   MATRIX-RESULT kernel=<release> status=<0|1> doctor=<ok|FAIL> doctor_s=<s> suite=<ok|FAIL> suite_s=<s> failed=<names>
# and exits with that status.
set -u
blocker=$1
shift

now() {
    read -r up _ </proc/uptime
    echo "$up"
}

since() {
    awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'
}

status=0
failed=
start=$(now)
if "$blocker" doctor; then
    doctor=ok
else
    doctor=FAIL
    status=1
    failed=doctor
fi
doctor_s=$(since "$start")
echo "MATRIX-STEP doctor $doctor ${doctor_s}s"

suite=ok
suite_start=$(now)
for test in "$@"; do
    name=$(basename "$test")
    name=${name%-*}
    start=$(now)
    if "$test"; then
        result=ok
    else
        result=FAIL
        suite=FAIL
        status=1
        failed="${failed:+$failed,}$name"
    fi
    echo "MATRIX-STEP test $name $result $(since "$start")s"
done
suite_s=$(since "$suite_start")
echo "MATRIX-RESULT kernel=$(uname -r) status=$status doctor=$doctor doctor_s=$doctor_s suite=$suite suite_s=$suite_s failed=${failed:--}"
exit "$status"
