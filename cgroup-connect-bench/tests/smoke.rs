//! The benchmark cannot rot: its smoke mode (one round, tiny sizes) runs every measurement on
//! the real kernel in CI. It asserts that each figure was produced, never how fast.
use cgroup_connect_bench::{Config, render, run};

#[test]
fn every_measurement_runs() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none_or(|v| v != "true"),
            "CI=true: the benchmark smoke test cannot skip: not root"
        );
        eprintln!("skipping: needs root (run the tests with sudo ./scripts/test.sh)");
        return;
    }
    let blocker =
        std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("blocker");
    assert!(blocker.exists(), "build the blocker first: {}", blocker.display());
    let report = run(&Config::smoke(blocker), &mut |l| eprintln!("bench: {l}"))
        .unwrap_or_else(|e| panic!("benchmark: {e:#}"));
    let text = render(&report);
    eprintln!("{text}");
    for variant in [
        "no filter",
        "allow-only BPF program",
        "blocker, IPv4 /32",
        "blocker, IPv6 /128 + ports",
        "nftables hash set",
        "nftables interval set",
        "iptables rules",
    ] {
        let row = report
            .connect
            .iter()
            .find(|c| c.variant == variant)
            .unwrap_or_else(|| panic!("no {variant} row"));
        assert!(row.ns_per_connect.median > 0.0, "{variant}: {row:?}");
    }
    assert!(
        report
            .decision
            .iter()
            .any(|d| d.program.starts_with("blocker") && d.ns_per_decision.median > 0.0),
        "{:?}",
        report.decision
    );
    assert!(
        report.decision.iter().any(|d| d.program.starts_with("allow-only")),
        "{:?}",
        report.decision
    );
    assert_eq!(report.load.len(), 4);
    let reload = report.reload.as_ref().expect("reload row");
    assert!(reload.probes > 0 && reload.not_blocked == 0, "{reload:?}");
    assert!(report.blocker_rss_kib > 0);
    // Four workloads in five places; the default refuses UDP-Lite sockets, so that one row
    // has no figure.
    let packets = &report.packets.rows;
    assert_eq!(packets.len(), 20, "{packets:?}");
    let refused = |r: &&cgroup_connect_bench::packets::PacketRow| {
        r.variant == "blocker, packet checks on" && r.workload.contains("UDP-Lite")
    };
    assert!(packets.iter().filter(refused).all(|r| r.value.median.is_nan()), "{packets:?}");
    assert!(packets.iter().filter(|r| !refused(r)).all(|r| r.value.median > 0.0), "{packets:?}");
    decisions_ran(&report.decisions);
    let checked =
        packets.iter().filter(|r| r.variant == "blocker, packet checks on" && !refused(r));
    assert!(
        checked.clone().count() == 3
            && checked.clone().all(|r| r.program_ns_per_run.is_some_and(|s| s.median > 0.0)),
        "{packets:?}"
    );
}

/// Every decision workload ran in every variant of its family, refusing what it should, and
/// the memory figures and targets are there.
fn decisions_ran(d: &cgroup_connect_bench::decisions::DecisionsReport) {
    use cgroup_connect_bench::decisions::{
        ALLOW_ONLY, BLOCKER, BLOCKER_AUDIT, BLOCKER_READER, HALF_BLOCKED, HASH_MAP, LPM_TRIE,
        ONE_BLOCKED,
    };
    let v4 = [ALLOW_ONLY, BLOCKER, BLOCKER_READER, BLOCKER_AUDIT, HASH_MAP, LPM_TRIE];
    let workloads: Vec<&str> = d.rows.iter().map(|r| r.workload).fold(vec![], |mut seen, w| {
        if !seen.contains(&w) {
            seen.push(w);
        }
        seen
    });
    assert_eq!(workloads.len(), 7, "{workloads:?}");
    for w in workloads {
        let variants: Vec<&str> =
            d.rows.iter().filter(|r| r.workload == w).map(|r| r.variant).collect();
        let want: &[&str] = if w.starts_with("IPv6") { &[ALLOW_ONLY, BLOCKER] } else { &v4 };
        assert_eq!(variants.len(), want.len(), "{w}: {variants:?}");
        assert!(want.iter().all(|v| variants.contains(v)), "{w}: {variants:?}");
    }
    for r in &d.rows {
        assert!(r.ns_per_decision.median > 0.0 && r.ratio_to_allow_only > 0.0, "{r:?}");
        // Allow-only and audit mode refuse nothing.
        let blocks = ![ALLOW_ONLY, BLOCKER_AUDIT].contains(&r.variant)
            && (r.workload == ONE_BLOCKED || r.workload == HALF_BLOCKED);
        assert_eq!(r.refused > 0, blocks, "{r:?}");
    }
    assert!(d.rules_v4_covered_share > 0.0 && d.rules_v4_covered_share < 0.5, "{d:?}");
    for b in [&d.blocker_v4, &d.blocker_v6] {
        assert!(b.start_seconds.median > 0.0 && b.peak_rss_start_kib.median > 0.0, "{b:?}");
        assert!(b.table_kib.median > 0.0, "{b:?}");
    }
    assert!(d.blocker_v4.peak_rss_reload_kib.is_some_and(|s| s.median > 0.0), "{d:?}");
    assert!(d.blocker_v4.reload_command_peak_rss_kib.is_some_and(|s| s.median > 0.0), "{d:?}");
    assert_eq!(d.references.len(), 2, "{:?}", d.references);
    assert!(d.references.iter().all(|m| m.map_kib > 0.0), "{:?}", d.references);
    assert!(d.targets.iter().all(|t| t.measured.is_finite()), "{:?}", d.targets);
}
