//! The capabilities the blocker needs, found by running it with exactly them: uid 0 with
//! `CAP_BPF`, `CAP_NET_ADMIN` and `CAP_PERFMON` and every other capability gone from the
//! bounding set (as the systemd unit runs it) blocks; without any one of them `run` and
//! `doctor` name it. A verifier refusal (provoked honestly: the programs without
//! `CAP_PERFMON`) is one line, with the whole log behind `--verifier-log FILE`.
mod common;

use std::process::{Command, Output};

use common::{
    Blocker, Outcome::Blocked, TempDir, assert_nothing_attached, connect_in, lo, outcome,
    temp_cgroup,
};

/// The capabilities of `privileges::NEEDED`, as setpriv names them.
const NEEDED: [&str; 3] = ["bpf", "net_admin", "perfmon"];

/// `setpriv` arguments that keep uid 0 and leave exactly `caps` (setpriv names), in every set.
fn with_only(caps: &[&str]) -> Vec<String> {
    let list: String = caps.iter().flat_map(|c| [",+", c]).collect();
    let mut args = vec!["setpriv".to_owned()];
    for set in ["--inh-caps", "--ambient-caps", "--bounding-set"] {
        args.push(format!("{set}=-all{list}"));
    }
    args.push("--".to_owned());
    args
}

fn blocker_with_only(caps: &[&str], args: &[&str]) -> Output {
    let wrapper = with_only(caps);
    Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg(common::BLOCKER)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run setpriv (util-linux): {e}"))
}

#[test]
fn blocks_with_exactly_the_needed_capabilities() {
    require_privileges!();
    let cg = temp_cgroup();
    let wrapper = with_only(&NEEDED);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut b = Blocker::start_under(
        &wrapper,
        &["--cgroup", cg.path().to_str().unwrap(), "--block", "127.0.0.2", "--pin"],
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", b.pid())).unwrap();
    let effective = status.lines().find(|l| l.starts_with("CapEff:")).unwrap().to_owned();
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked);
    let (exit, _) = b.stop(libc::SIGTERM);
    assert!(exit.success(), "{exit:?}: {}", b.stderr());
    // CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39), nothing else.
    assert_eq!(effective.split_whitespace().nth(1), Some("000000c000001000"), "{effective}");
}

#[test]
fn each_missing_capability_is_named_by_run_and_doctor() {
    require_privileges!();
    let cg = temp_cgroup();
    for missing in NEEDED {
        let caps: Vec<&str> = NEEDED.into_iter().filter(|c| *c != missing).collect();
        let name = format!("CAP_{}", missing.to_uppercase());
        let out = blocker_with_only(
            &caps,
            &["run", "--cgroup", cg.path().to_str().unwrap(), "--block", "127.0.0.2"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "without {name}: {err}");
        assert!(err.contains(&format!("missing capabilities {name}:")), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_nothing_attached(cg.path());
        let out = blocker_with_only(&caps, &["doctor"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().find(|l| l.contains(" capabilities ")).unwrap_or_default();
        assert!(line.starts_with("FAIL") && line.contains(&format!("missing {name}")), "{stdout}");
        assert!(!stdout.contains("this kernel lacks"), "blames the kernel: {stdout}");
    }
}

#[test]
fn a_verifier_refusal_is_one_line_with_the_log_behind_a_flag() {
    require_privileges!();
    let dir = TempDir::new("verifier");
    let log = dir.path().join("verifier.log");
    // CAP_DAC_OVERRIDE only lets doctor make its test cgroup where the cgroup root is 0555.
    let out = blocker_with_only(
        &["bpf", "net_admin", "dac_override"],
        &["doctor", "--verifier-log", log.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = stdout.lines().find(|l| l.contains(" cgroup-bpf ")).unwrap_or_default();
    let prefix = "FAIL  cgroup-bpf   the kernel refused program ";
    let reason = line
        .strip_prefix(prefix)
        .and_then(|rest| rest.split_once(": "))
        .and_then(|(_, rest)| rest.split_once(" (fix: "))
        .map_or_else(|| panic!("no refusal line: {stdout}"), |(reason, _)| reason);
    assert!(line.contains("CAP_PERFMON"), "{line}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("verifier log of BPF program check_"), "{text}");
    assert!(text.lines().any(|l| l.trim() == reason), "{reason:?} not in\n{text}");
    assert!(text.lines().count() > 10 && text.contains("processed "), "{text}");
    assert!(stdout.lines().count() < 25, "a dump on stdout: {stdout}");
}
