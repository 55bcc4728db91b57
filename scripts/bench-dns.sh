#!/usr/bin/env bash
# The DNS forwarder's benchmark (issue 13; docs/performance.md section 12): added latency of a
# query through `blocker run --dns-port` for a name of no rule, an address known already, and
# a new address each (the fast path: the map of learned addresses), and the cost of a non-DNS
# decision (connect4's bpf_stats) with that map empty and holding an entry, in interleaved
# rounds. Everything in a test network namespace (dnsmasq on 192.0.2.53) and a child cgroup
# made here; the clients are child processes moved into the cgroup.
#
# Usage: sudo ./scripts/bench-dns.sh [--out bench/results.json]   (needs a release build)
# Environment: QUERIES (2000), NEW (500), CONNECTS (200000 per round), ROUNDS (5).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT_DIR"
require_root "the DNS benchmark (network namespace, cgroup, BPF)"
out=
[[ ${1:-} == --out ]] && out=$2
queries=${QUERIES:-2000} new=${NEW:-500} connects=${CONNECTS:-200000} rounds=${ROUNDS:-5}
blocker=$ROOT_DIR/target/release/blocker
name=bench-dns-$$
ns=bench-dns-$$
cg=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)/bench-dns-$$
work=$(mktemp -d)
pid_blocker= pid_dnsmasq=
cleanup() {
    [[ -n $pid_blocker ]] && kill "$pid_blocker" 2>/dev/null && wait "$pid_blocker" 2>/dev/null
    [[ -n $pid_dnsmasq ]] && kill "$pid_dnsmasq" 2>/dev/null && wait "$pid_dnsmasq" 2>/dev/null
    rmdir "$cg" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" addr add 192.0.2.1/24 dev lo
ip -n "$ns" addr add 192.0.2.53/32 dev lo
mkdir "$cg"
{
    echo "192.0.2.32 known.wild.test"
    for i in $(seq 1 "$new"); do echo "198.18.$((i / 250)).$((i % 250 + 1)) n$i.wild.test"; done
} >"$work/hosts"
printf 'nameserver 192.0.2.53\noptions timeout:2 attempts:1\n' >"$work/resolv.conf"
nsenter --net=/run/netns/"$ns" /usr/sbin/dnsmasq --keep-in-foreground --no-resolv --no-hosts \
    --addn-hosts="$work/hosts" --listen-address=192.0.2.53 --bind-interfaces --local-ttl=600 \
    --pid-file= --user=root --address=/other.test/192.0.2.77 >/dev/null 2>&1 &
pid_dnsmasq=$!
nsenter --net=/run/netns/"$ns" "$blocker" run --cgroup "$cg" --name "$name" --dns-port 535 \
    --block '*.wild.test' >"$work/blocker.log" 2>&1 &
pid_blocker=$!
for _ in $(seq 300); do grep -q attached "$work/blocker.log" && break; sleep 0.1; done
grep -q attached "$work/blocker.log" || { cat "$work/blocker.log" >&2; cat "$work/blocker.log" >&2; echo "the blocker did not attach" >&2; exit 1; }

# Runs python3 CODE ARG in the cgroup (a child shell moves itself in) and the namespace, with
# the benchmark's resolv.conf.
in_cgroup() {
    printf '%s' "$1" >"$work/code.py"
    sh -c 'echo $$ >"$0/cgroup.procs" && exec unshare -m -- sh -c '"'"'mount --bind "$0" /etc/resolv.conf && exec nsenter --net="$1" python3 "$2" "$3"'"'"' "$1" "$2" "$3" "$4"' \
        "$cg" "$work/resolv.conf" "/run/netns/$ns" "$work/code.py" "$2"
}
# Times one UDP A query at a time on one socket to 192.0.2.53 (sent through the forwarder),
# for each name given (a file of names); prints p50 p99 max in microseconds.
query_code='
import socket, struct, sys, time
names = open(sys.argv[1]).read().split()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
lat = []
for i, n in enumerate(names):
    q = struct.pack(">6H", i & 0xffff, 0x100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    t = time.perf_counter_ns(); s.sendto(q, ("192.0.2.53", 53)); s.recv(512)
    lat.append((time.perf_counter_ns() - t) / 1000)
lat.sort()
print("%.0f %.0f %.0f" % (lat[len(lat) // 2], lat[len(lat) * 99 // 100], lat[-1]))
'
printf 'other.test\n%.0s' $(seq "$queries") >"$work/other"
printf 'known.wild.test\n%.0s' $(seq "$queries") >"$work/known"
seq 1 "$new" | sed 's/^/n/; s/$/.wild.test/' >"$work/new"
lat_other=$(in_cgroup "$query_code" "$work/other")
lat_known=$(in_cgroup "$query_code" "$work/known")
lat_new=$(in_cgroup "$query_code" "$work/new")

# Non-DNS decisions: UDP connects to 192.0.2.99:9 (no rule, not learned), timed by bpf_stats.
connect_code='
import socket, sys
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("192.0.2.99", 9)); s.close()
'
prog=$(bpftool -j cgroup show "$cg" | jq -r '.[] | select(.attach_type | test("inet4_connect|connect4")) | .id')
old_stats=$(cat /proc/sys/kernel/bpf_stats_enabled)
echo 1 >/proc/sys/kernel/bpf_stats_enabled
pins=/sys/fs/bpf/cgroup-connect/$name
# An entry for 203.0.113.1 (mapped key), deciding for 10 minutes: the map is not empty.
boot_ns=$(awk '{printf "%d", $1 * 1e9}' /proc/uptime)
hex() { printf '%016x' "$1" | sed 's/../& /g' | awk '{for (i = 8; i >= 1; i--) printf "%s ", $i}'; }
key="00 00 00 00 00 00 00 00 01 71 00 cb ff ff 00 00"
value="$(hex $((boot_ns + 600000000000))) 00 00 ff ff $(for _ in $(seq 7); do printf '00 00 01 00 '; done)00 00 00 80 $(for _ in $(seq 7); do printf '00 00 00 00 '; done)"
config_word() { bpftool map update pinned "$pins/config" key 18 0 0 0 value "$1" 0 0 0; }
ns_per() {
    local before after
    before=$(bpftool -j prog show id "$prog" | jq '[.run_time_ns // 0, .run_cnt // 0]')
    in_cgroup "$connect_code" "$connects"
    after=$(bpftool -j prog show id "$prog" | jq '[.run_time_ns // 0, .run_cnt // 0]')
    jq -n --argjson a "$before" --argjson b "$after" '($b[0] - $a[0]) / ($b[1] - $a[1])'
}
empty=() full=()
for r in $(seq "$rounds"); do
    config_word 0
    bpftool map delete pinned "$pins/dns_learned" key hex $key 2>/dev/null || true
    empty+=("$(ns_per)")
    bpftool map update pinned "$pins/dns_learned" key hex $key value hex $value
    config_word 1
    full+=("$(ns_per)")
done
config_word 0
bpftool map delete pinned "$pins/dns_learned" key hex $key 2>/dev/null || true
echo "$old_stats" >/proc/sys/kernel/bpf_stats_enabled
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
load=$(cut -d' ' -f1-3 /proc/loadavg)
json=$(jq -n --arg load "$load" --arg other "$lat_other" --arg known "$lat_known" \
    --arg new "$lat_new" --argjson queries "$queries" --argjson newn "$new" \
    --argjson empty "$(median "${empty[@]}")" --argjson full "$(median "${full[@]}")" \
    --arg empties "${empty[*]}" --arg fulls "${full[*]}" '
    def lat: split(" ") | map(tonumber) | {p50_us: .[0], p99_us: .[1], max_us: .[2]};
    {date: (now | todate), loadavg: $load, queries: $queries, new_names: $newn,
     latency: {no_rule: ($other | lat), known: ($known | lat), new_address: ($new | lat)},
     decision_ns: {map_empty: $empty, map_one_entry: $full,
                   rounds_empty: ($empties | split(" ") | map(tonumber)),
                   rounds_one_entry: ($fulls | split(" ") | map(tonumber))}}')
echo "$json"
if [[ -n $out ]]; then
    # Python keeps the rest of the file as it is written (jq would rewrite 0.0 as 0).
    DNS_JSON=$json python3 -c '
import json, os, sys
text = open(sys.argv[1]).read()
all = json.loads(text)
all["dns"] = json.loads(os.environ["DNS_JSON"])
open(sys.argv[1], "w").write(json.dumps(all, indent=2, ensure_ascii=False) + "\n")
' "$out"
fi
