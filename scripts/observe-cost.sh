#!/usr/bin/env bash
# Observe mode's cost per decision (issue 12), with bpf_stats: the connect4 program's
# run_time_ns / run_cnt over a burst of connects from a test cgroup, for
#   enforce   the same rules without --audit (one flag test more than before observe mode);
#   enforce1  as enforce, one destination again and again;
#   hit1      --audit, one destination again and again (a slot of the CPU's cache);
#   hit       --audit, the same 64 destinations again and again (slots of the CPU's cache);
#   new       --audit, a new destination each connect (an insert into the LRU hash);
#   evict     --audit, a new destination each connect into a full map (an insert that evicts).
#   sudo ./scripts/observe-cost.sh [CONNECTS]     (default 100000 per case)
# Uses target/release/blocker as built (or $BLOCKER); makes its own cgroup and instances, removes them on
# exit. Connects go to 127.0.0.0/8 ports where nothing listens (refused at once). It asserts
# nothing: read docs/performance.md. bpf_stats is global: turned on for the run, then restored.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
require_root "observe-cost.sh"
cd "$ROOT_DIR"
n=${1:-100000}
blocker=${BLOCKER:-target/release/blocker}
root=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
cg="$root/cgroup-connect-observe-cost-$$"
name="observe-cost-$$"
old_stats=$(cat /proc/sys/kernel/bpf_stats_enabled)
pid=
cleanup() {
    if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    "$blocker" detach "$name" >/dev/null 2>&1 || true
    rmdir "$cg" 2>/dev/null || true
    echo "$old_stats" >/proc/sys/kernel/bpf_stats_enabled
}
trap cleanup EXIT
mkdir "$cg"
echo 1 >/proc/sys/kernel/bpf_stats_enabled

# Connects from a child in the cgroup: MODE one (one destination), same (64 destinations in
# turn) or new (port and
# address change each time: 2^24 addresses * ports, never the same twice in a run).
workload() {
    sh -c 'echo $$ > "$1/cgroup.procs" && exec python3 - "$2" "$3" "$4"' _ "$cg" "$1" "$n" "$2" <<'EOF'
import socket, sys
mode, n, salt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    k = 0 if mode == "one" else i % 64 if mode == "same" else i + salt * n
    addr = "127.%d.%d.%d" % ((k >> 16) & 255, (k >> 8) & 255, (k & 255) | 1)
    s = socket.socket()
    try:
        s.connect((addr, 1024 + (k >> 24 & 1023) + (k & 7)))
    except OSError:
        pass
    s.close()
EOF
}

# run_time_ns and run_cnt of the instance's connect4 program.
stats() {
    python3 - "$cg" <<'EOF'
import json, subprocess, sys
attached = json.loads(subprocess.check_output(["bpftool", "-j", "cgroup", "show", sys.argv[1]]))
ids = [p["id"] for p in attached if p["name"] == "check_connect4"]
prog = json.loads(subprocess.check_output(["bpftool", "-j", "prog", "show", "id", str(ids[0])]))
print(prog.get("run_time_ns", 0), prog.get("run_cnt", 0))
EOF
}

# Starts the blocker with ARGS, runs the workload MODE SALT, prints ns per decision.
measure() {
    local label=$1 mode=$2 salt=$3
    shift 3
    "$blocker" run --cgroup "$cg" --name "$name" "$@" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        bpftool -j cgroup show "$cg" | grep -q check_connect4 && break
        sleep 0.1
    done
    if [[ $label == evict ]]; then
        workload new 7 # fills the map first (capacity 4096 below)
    fi
    read -r t0 c0 < <(stats)
    workload "$mode" "$salt"
    read -r t1 c1 < <(stats)
    python3 -c 'import sys; t0,c0,t1,c1=map(int,sys.argv[2:]); print("%-8s %6.1f ns per decision over %d runs" % (sys.argv[1], (t1-t0)/max(c1-c0,1), c1-c0))' \
        "$label" "$t0" "$c0" "$t1" "$c1"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
}

rules=(--block 192.0.2.0/24 --allow 127.0.0.0/8)
measure enforce same 0 "${rules[@]}"
measure enforce1 one 0 "${rules[@]}"
measure hit1 one 0 --audit "${rules[@]}"
measure hit same 0 --audit "${rules[@]}"
measure new new 1 --audit "${rules[@]}"
measure evict new 2 --audit --observe-capacity 4096 "${rules[@]}"
measure enforce same 0 "${rules[@]}"
