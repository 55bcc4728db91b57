#!/usr/bin/env bash
# Benchmarks: the blocker against no filter, nftables, ipset and iptables, in one run.
#   sudo ./scripts/bench.sh           full mode; figures to bench/results.json
#   sudo ./scripts/bench.sh --quick   under three minutes; figures to bench/results-quick.json
#   sudo ./scripts/bench.sh --packets only the packet checks' cost, full size; its section
#                                     replaces the one in bench/results.json, the rest stays
#   sudo ./scripts/bench.sh --starts  only the start on a 1M-rule policy file against the
#                                     same rules as a list; likewise its own section
#   sudo ./scripts/bench.sh --events  only an events reader's cost per blocked decision and
#                                     a lone event's wait; likewise its own section
#   sudo ./scripts/bench.sh --decisions  only the decision workloads (one and many destinations,
#                                     blocked, with a reader, IPv6) against allow-only, hash
#                                     map and LPM trie references, and the blocker's memory and
#                                     start on 1M real-list rules; likewise its own section
#                                     (about 10 minutes on 2 cores)
# Installs what it needs (nftables, iptables, ipset, bpftool through setup.sh), builds the
# release binaries, and runs target/release/cgroup-connect-bench. It makes its own cgroups,
# network namespaces (where nftables, ipset and iptables rules live) and instances, and
# removes them, also on failure. It asserts nothing about time: read docs/performance.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
require_root "bench.sh"
cd "$ROOT_DIR"
./scripts/setup.sh
./scripts/build.sh
out=bench/results.json
mode=()
case "${1:-}" in
    --quick) mode=(--quick); out=bench/results-quick.json ;;
    --smoke) mode=(--smoke); out=bench/results-smoke.json ;;
    --packets) mode=(--packets-only) ;;
    --starts) mode=(--starts-only) ;;
    --events) mode=(--events-only) ;;
    --decisions) mode=(--decisions-only) ;;
    "") ;;
    *) echo "usage: $0 [--quick|--smoke|--packets|--starts|--events|--decisions]" >&2; exit 2 ;;
esac
exec target/release/cgroup-connect-bench "${mode[@]}" --out "$out"
