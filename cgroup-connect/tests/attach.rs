//! `blocker run` on the real kernel: what it blocks, for whom, and that it detaches.
mod common;

use common::{
    Blocker, Place, Probe, assert_nothing_attached, connect_in, listener, probe, temp_cgroup,
};

const EPERM: i32 = libc::EPERM;

#[test]
fn blocks_listed_address_only_inside_the_cgroup_until_sigint() {
    require_privileges!();
    let cg = temp_cgroup();
    let nested = cg.child("nested").unwrap_or_else(|e| panic!("nested cgroup: {e}"));
    let (_l2, blocked_dst) = listener("127.0.0.2");
    let (_l1, allowed) = listener("127.0.0.1");
    let cg_path = cg.path().to_str().expect("utf-8 path");
    let mut blocker = Blocker::start(&["--cgroup", cg_path, "--block-ip", "127.0.0.2"]);
    assert!(blocker.attached_line.contains(cg_path), "{}", blocker.attached_line);
    assert!(blocker.attached_line.contains("127.0.0.2"), "{}", blocker.attached_line);

    // The address inserted from userspace matches what the kernel hands the program: byte
    // order is right (a swapped key would be 2.0.0.127 and block nothing here).
    assert_eq!(
        connect_in(cg.path(), blocked_dst),
        Err(EPERM),
        "blocked_dst address inside the cgroup"
    );
    assert_eq!(connect_in(cg.path(), allowed), Ok(()), "other address inside the cgroup");
    assert_eq!(connect_in(nested.path(), blocked_dst), Err(EPERM), "child cgroup is covered");
    assert_eq!(
        probe(Place::default(), Probe::TcpConnect, blocked_dst),
        Ok(()),
        "process outside the cgroup"
    );

    let (status, rest) = blocker.stop(libc::SIGINT);
    assert!(status.success(), "exit after SIGINT: {status}");
    assert!(rest.iter().any(|l| l.starts_with("detached")), "{rest:?}");
    assert_eq!(connect_in(cg.path(), blocked_dst), Ok(()), "block gone after SIGINT");
    assert_nothing_attached(cg.path());
}

#[test]
fn sigterm_detaches_too() {
    require_privileges!();
    let cg = temp_cgroup();
    let (_l, blocked_dst) = listener("127.0.0.3");
    let mut blocker =
        Blocker::start(&["--cgroup", cg.path().to_str().unwrap(), "--block-ip", "127.0.0.3"]);
    assert_eq!(connect_in(cg.path(), blocked_dst), Err(EPERM));
    let (status, _) = blocker.stop(libc::SIGTERM);
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert_eq!(connect_in(cg.path(), blocked_dst), Ok(()));
    assert_nothing_attached(cg.path());
}

#[test]
fn several_addresses_and_coexisting_instances() {
    require_privileges!();
    let cg = temp_cgroup();
    let (_a, a) = listener("127.0.0.4");
    let (_b, b) = listener("127.0.0.5");
    let (_c, c) = listener("127.0.0.6");
    let path = cg.path().to_str().unwrap();
    let mut first =
        Blocker::start(&["--cgroup", path, "--block-ip", "127.0.0.4", "--block-ip", "127.0.0.5"]);
    // A second program on the same cgroup does not replace the first (multi-attach).
    let mut second = Blocker::start(&["--cgroup", path, "--block-ip", "127.0.0.6"]);
    for dst in [a, b, c] {
        assert_eq!(connect_in(cg.path(), dst), Err(EPERM), "{dst}");
    }
    drop(second.stop(libc::SIGINT));
    assert_eq!(connect_in(cg.path(), c), Ok(()));
    assert_eq!(connect_in(cg.path(), a), Err(EPERM), "first instance still enforces");
    drop(first.stop(libc::SIGINT));
    assert_nothing_attached(cg.path());
}

/// The programs are loaded on several threads at once: every one the instance attaches was
/// loaded, and `--timings` names each program's load beside the whole `verify` phase.
#[test]
fn timings_name_each_program_loaded() {
    require_privileges!();
    let cg = temp_cgroup();
    let (_l, blocked_dst) = listener("127.0.0.4");
    let cg_path = cg.path().to_str().unwrap();
    let mut blocker = Blocker::start(&["--cgroup", cg_path, "--block", "127.0.0.4", "--timings"]);
    assert_eq!(connect_in(cg.path(), blocked_dst), Err(EPERM));
    let (status, _) = blocker.stop(libc::SIGTERM);
    assert!(status.success(), "exit after SIGTERM: {status}");
    let stderr = blocker.stderr();
    let timings = stderr.lines().find(|l| l.starts_with("timings:")).unwrap_or_else(|| {
        panic!("no timings line: {stderr}");
    });
    let checks = ["check_socket", "check_setsockopt"];
    let packet = if blocker.attached_line.contains("egress") {
        "check_egress"
    } else {
        "check_sendmsg_options"
    };
    let deciding = cgroup_connect_common::programs::DECIDING;
    for phase in ["object", "verify", packet].iter().chain(&checks).chain(&deciding) {
        assert!(timings.contains(&format!(" {phase}=")), "{phase} missing: {timings}");
    }
}
