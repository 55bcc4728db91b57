//! Instances and persistence on the real kernel: pinning, SIGKILL, adoption, detach.
mod common;

use common::{
    Blocker,
    Outcome::{Allowed, Blocked},
    Prober, assert_nothing_attached, attached_count, blocker_ok, blocker_output, connect_in,
    instance_name, lo, outcome, temp_cgroup,
};

#[test]
fn sigkill_of_a_pinned_instance_keeps_enforcing_and_a_restart_adopts_it() {
    require_privileges!();
    let cg = temp_cgroup();
    let name = instance_name();
    let path = cg.path().to_str().unwrap();
    let mut first =
        Blocker::start(&["--cgroup", path, "--name", &name, "--pin", "--block", "127.0.0.2"]);
    assert_eq!(attached_count(cg.path()), 4);
    let prober = Prober::start(
        cg.path(),
        vec![(lo("127.0.0.2"), vec![Blocked]), (lo("127.0.0.1"), vec![Allowed])],
    );
    let (status, _) = first.stop(libc::SIGKILL);
    assert!(!status.success());
    assert_eq!(
        outcome(connect_in(cg.path(), lo("127.0.0.2"))),
        Blocked,
        "still enforcing after SIGKILL"
    );
    let status = blocker_ok(&["status", "--json"]);
    assert!(
        status.contains(&format!("\"name\": \"{name}\""))
            && status.contains("\"state\": \"pinned\""),
        "{status}"
    );
    // The restart adopts the pinned instance: no second set of programs, no window.
    let mut second = Blocker::start(&[
        "--cgroup",
        path,
        "--name",
        &name,
        "--pin",
        "--block",
        "127.0.0.2",
        "--block",
        "127.0.0.3",
    ]);
    assert!(second.attached_line.contains("adopted"), "{}", second.attached_line);
    assert_eq!(attached_count(cg.path()), 4, "adopted, not stacked");
    assert_eq!(
        outcome(connect_in(cg.path(), lo("127.0.0.3"))),
        Blocked,
        "the new policy is in force"
    );
    let report = prober.finish();
    assert!(report.probes > 10, "{report:?}");
    assert!(report.wrong.is_empty(), "a window without enforcement: {report:?}");
    let (status, rest) = second.stop(libc::SIGINT);
    assert!(status.success());
    assert!(rest.iter().any(|l| l.contains("stays attached")), "{rest:?}");
    assert_eq!(
        outcome(connect_in(cg.path(), lo("127.0.0.2"))),
        Blocked,
        "a pinned instance outlives its process"
    );
    let _ = blocker_ok(&["detach", &name]);
    assert_nothing_attached(cg.path());
    assert!(
        !std::path::Path::new("/sys/fs/bpf/cgroup-connect").join(&name).exists(),
        "pins removed"
    );
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Allowed);
}

#[test]
fn sigkill_of_an_unpinned_instance_detaches() {
    require_privileges!();
    let cg = temp_cgroup();
    let name = instance_name();
    let path = cg.path().to_str().unwrap();
    let mut blocker = Blocker::start(&["--cgroup", path, "--name", &name, "--block", "127.0.0.2"]);
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked);
    let _ = blocker.stop(libc::SIGKILL);
    // Fail-open, as documented: the kernel drops links whose process died.
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Allowed);
    assert_nothing_attached(cg.path());
    let status = blocker_ok(&["status"]);
    assert!(status.contains(&format!("{name}: stale")), "{status}");
    // The name can be used again: the stale pins are cleared.
    let again = Blocker::start(&["--cgroup", path, "--name", &name, "--block", "127.0.0.2"]);
    assert!(!again.attached_line.contains("adopted"), "{}", again.attached_line);
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked);
}

#[test]
fn detach_stops_the_serving_process() {
    require_privileges!();
    let cg = temp_cgroup();
    let name = instance_name();
    let mut blocker = Blocker::start(&[
        "--cgroup",
        cg.path().to_str().unwrap(),
        "--name",
        &name,
        "--block",
        "127.0.0.2",
    ]);
    let out = blocker_ok(&["detach", &name]);
    assert!(out.contains("detached"), "{out}");
    let (status, _) = blocker.stop(0);
    assert!(status.success(), "the process exits cleanly on the detach's SIGTERM: {status}");
    assert_nothing_attached(cg.path());
    let out = blocker_output(&["detach", &name], None);
    assert_eq!(out.status.code(), Some(2), "detaching it again names the missing instance");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&name));
}

#[test]
fn a_busy_name_or_another_cgroup_is_refused() {
    require_privileges!();
    let cg = temp_cgroup();
    let other = temp_cgroup();
    let name = instance_name();
    let _running = Blocker::start(&[
        "--cgroup",
        cg.path().to_str().unwrap(),
        "--name",
        &name,
        "--block",
        "127.0.0.2",
    ]);
    let out = blocker_output(
        &["run", "--cgroup", cg.path().to_str().unwrap(), "--name", &name, "--block", "127.0.0.3"],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already run by process"), "{out:?}");
    assert_nothing_attached(other.path());
    let out = blocker_output(&["run", "--name", "bad/name"], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad/name"));
}
