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
    let checked =
        packets.iter().filter(|r| r.variant == "blocker, packet checks on" && !refused(r));
    assert!(
        checked.clone().count() == 3
            && checked.clone().all(|r| r.program_ns_per_run.is_some_and(|s| s.median > 0.0)),
        "{packets:?}"
    );
}
