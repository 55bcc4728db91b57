//! Instances and persistence on the real kernel: pinning, SIGKILL, adoption, detach.
mod common;

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path};

use common::{
    Blocker, BpfMount,
    Outcome::{Allowed, Blocked},
    Prober, as_nobody, assert_nothing_attached, attached_count, blocker_ok, blocker_output,
    connect_in, in_private_mounts, instance_name, lo, outcome, temp_cgroup,
};

#[test]
fn sigkill_of_a_pinned_instance_keeps_enforcing_and_a_restart_adopts_it() {
    require_privileges!();
    let cg = temp_cgroup();
    let name = instance_name();
    let path = cg.path().to_str().unwrap();
    let mut first =
        Blocker::start(&["--cgroup", path, "--name", &name, "--pin", "--block", "127.0.0.2"]);
    // The four sock_addr programs and three packet checks: socket, setsockopt, and the LSM one
    // or, where the kernel does not load it, the egress one.
    assert_eq!(attached_count(cg.path()), 7);
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
    assert_eq!(attached_count(cg.path()), 7, "adopted, not stacked");
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

/// A privileged port (the blocker refuses any other for a forwarder) free on 127.0.0.1 for
/// both UDP and TCP a moment ago, for a DNS forwarder: one of 600-999, from the test's pid on.
fn free_port() -> String {
    let first = 600 + std::process::id() % 400;
    for k in 0..400 {
        let port = u16::try_from(600 + (first - 600 + k) % 400).expect("below 1000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port.to_string();
        }
    }
    panic!("no port of 600-999 free for both UDP and TCP");
}

#[test]
fn the_dns_programs_are_attached_exactly_while_the_instance_has_a_forwarder() {
    require_privileges!();
    let cg = temp_cgroup();
    let name = instance_name();
    let path = cg.path().to_str().unwrap();
    let port = free_port();
    let pins = Path::new("/sys/fs/bpf/cgroup-connect").join(&name);
    let dns_pins = || {
        ["prog_dns_recvmsg4", "link_dns_recvmsg4", "prog_dns_getpeername4", "link_dns_getpeername4"]
            .map(|p| pins.join(p).exists())
    };
    let run = |dns: bool| {
        let mut args = vec!["--cgroup", path, "--name", &name, "--pin", "--block", "127.0.0.2"];
        if dns {
            args.extend(["--dns-port", &port]);
        }
        Blocker::start(&args)
    };
    let mut first = run(true);
    // The seven of an instance without a forwarder, and recvmsg4 and getpeername4.
    assert_eq!(attached_count(cg.path()), 9);
    assert_eq!(dns_pins(), [true; 4]);
    assert_eq!(common::status_row(&name)["dns"], "up");
    let _ = first.stop(libc::SIGKILL);
    // Adopted without --dns-port: the DNS programs go, links and program pins.
    let mut second = run(false);
    assert!(second.attached_line.contains("adopted"), "{}", second.attached_line);
    assert_eq!(attached_count(cg.path()), 7, "no DNS programs without a forwarder");
    assert_eq!(dns_pins(), [false; 4], "DNS program and link pins removed");
    assert_eq!(common::status_row(&name)["dns"], "off");
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked);
    let _ = second.stop(libc::SIGKILL);
    // Adopted with --dns-port again: they come back, once.
    let third = run(true);
    assert!(third.attached_line.contains("adopted"), "{}", third.attached_line);
    assert_eq!(attached_count(cg.path()), 9, "the DNS programs again, not stacked");
    assert_eq!(dns_pins(), [true; 4]);
    assert_eq!(common::status_row(&name)["dns"], "up");
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked);
    drop(third);
    assert_nothing_attached(cg.path());
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

/// The mode bits of `path` (not following a symlink).
fn mode(path: &str) -> u32 {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {path}: {e}")).permissions().mode()
        & 0o7777
}

#[test]
fn pin_and_state_folders_that_another_user_made_first_are_refused() {
    require_privileges!();
    let cg = temp_cgroup();
    let cgroup = cg.path().to_str().unwrap();
    // What nobody makes first, on a machine where bpffs and /run are world-writable; the path
    // the blocker must name; and the problem with it.
    let cases: [(&[&[&str]], &str, &str); 4] = [
        (&[&["mkdir", "/sys/fs/bpf/cgroup-connect"]], "/sys/fs/bpf/cgroup-connect", "uid 65534"),
        (
            &[
                &["mkdir", "-m", "755", "/run/theirs"],
                &["ln", "-s", "/run/theirs", "/sys/fs/bpf/cgroup-connect"],
            ],
            "/sys/fs/bpf/cgroup-connect",
            "symbolic link",
        ),
        (&[&["mkdir", "/run/cgroup-connect"]], "/run/cgroup-connect", "uid 65534"),
        (
            &[
                &["mkdir", "-m", "755", "/run/theirs"],
                &["ln", "-s", "/run/theirs", "/run/cgroup-connect"],
            ],
            "/run/cgroup-connect",
            "symbolic link",
        ),
    ];
    for (made, path, problem) in cases {
        in_private_mounts(BpfMount::WorldWritable, || {
            for command in made {
                as_nobody(command[0], &command[1..]);
            }
            let name = instance_name();
            let out = blocker_output(
                &["run", "--cgroup", cgroup, "--name", &name, "--block", "127.0.0.2"],
                None,
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{made:?}: {stderr}");
            assert!(stderr.contains(&format!("unsafe path {path}: it")), "{made:?}: {stderr}");
            assert!(stderr.contains(problem), "{made:?}: {stderr}");
            assert_nothing_attached(cg.path());
            if Path::new("/run/theirs").exists() {
                assert_eq!(mode("/run/theirs"), 0o755, "no chmod through the symlink");
                assert_eq!(fs::read_dir("/run/theirs").unwrap().count(), 0, "nothing made in it");
            }
        });
    }
}

#[test]
fn the_blocker_mounts_bpffs_root_only() {
    require_privileges!();
    let cg = temp_cgroup();
    in_private_mounts(BpfMount::NotBpffs, || {
        let blocker =
            Blocker::start(&["--cgroup", cg.path().to_str().unwrap(), "--block", "127.0.0.2"]);
        assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked);
        // bpffs adds the sticky bit to its root.
        assert_eq!(mode("/sys/fs/bpf") & 0o777, 0o700, "the bpffs the blocker mounted");
        for dir in ["/sys/fs/bpf/cgroup-connect", "/run/cgroup-connect"] {
            assert_eq!(mode(dir), 0o700, "{dir}");
            assert_eq!(mode(&format!("{dir}/{}", blocker.name)), 0o700, "{dir}/NAME");
        }
    });
}

#[test]
fn a_reused_pid_is_not_taken_for_the_instance_process() {
    require_privileges!();
    let (cg_a, cg_b) = (temp_cgroup(), temp_cgroup());
    let mut b =
        Blocker::start(&["--cgroup", cg_b.path().to_str().unwrap(), "--block", "127.0.0.3"]);
    let mut a =
        Blocker::start(&["--cgroup", cg_a.path().to_str().unwrap(), "--block", "127.0.0.2"]);
    let _ = a.stop(libc::SIGKILL);
    // A's pid is reused by B's process: its state names B's pid, with A's (other) start time.
    let state_file = format!("/run/cgroup-connect/{}/state.json", a.name);
    let mut state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&state_file).expect("A's state")).unwrap();
    state["pid"] = b.pid().into();
    let start = cgroup_connect::state::start_time(b.pid()).expect("B's start time");
    state["pid_start"] = (start + 1).into();
    fs::write(&state_file, state.to_string()).unwrap();

    let status = blocker_ok(&["status"]);
    assert!(status.contains(&format!("{}: stale", a.name)), "{status}");
    let out = blocker_ok(&["detach", &a.name]);
    assert!(out.contains("detached"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(b.running(), "detach of A signalled B's process");
    assert_eq!(outcome(connect_in(cg_b.path(), lo("127.0.0.3"))), Blocked, "B still enforces");
    let status = blocker_ok(&["status"]);
    assert!(status.contains(&format!("{}: running", b.name)), "{status}");
}

#[test]
fn edits_to_an_instance_that_nothing_enforces_are_refused() {
    require_privileges!();
    let cg = temp_cgroup();
    let cgroup = cg.path().to_str().unwrap();
    let mut dead = Blocker::start(&["--cgroup", cgroup, "--block", "127.0.0.2"]);
    let _ = dead.stop(libc::SIGKILL);
    let state_file = format!("/run/cgroup-connect/{}/state.json", dead.name);
    let state = fs::read_to_string(&state_file).expect("the killed instance's state");
    let list = blocker_ok(&["list", &dead.name]);
    for edit in [["add", &dead.name, "10.1.2.3"], ["remove", &dead.name, "127.0.0.2"]] {
        let out = blocker_output(&edit, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{edit:?}: {stderr}");
        assert!(
            stderr.contains(&format!("instance {} is not enforced", dead.name))
                && stderr.contains("nothing enforces")
                && stderr.contains("blocker run")
                && stderr.contains("blocker detach"),
            "{edit:?}: {stderr}"
        );
        assert_eq!(fs::read_to_string(&state_file).unwrap(), state, "{edit:?} changed the state");
        assert_eq!(blocker_ok(&["list", &dead.name]), list, "{edit:?} changed the rules");
    }
    drop(dead);

    // A pinned instance enforces with no process: it still takes edits.
    let mut pinned = Blocker::start(&["--cgroup", cgroup, "--pin", "--block", "127.0.0.2"]);
    let _ = pinned.stop(libc::SIGKILL);
    let out = blocker_ok(&["add", &pinned.name, "127.0.0.4"]);
    assert!(out.contains("2 rules"), "{out}");
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.4"))), Blocked);
}

/// A pinned instance whose programs read another table layout than this version writes (here
/// its layout word set to 0, as an instance pinned before the word has it) is not fed tables
/// it would misread: a `run` that would adopt it, and `stats`, are refused with a message
/// that names the instance and `blocker detach`. It keeps enforcing, and detach removes it.
#[test]
fn an_instance_pinned_with_another_table_layout_is_refused_not_adopted() {
    use cgroup_connect_common::{config, maps};
    require_privileges!();
    let cg = temp_cgroup();
    let name = instance_name();
    let path = cg.path().to_str().unwrap();
    let run = ["--cgroup", path, "--name", &name, "--pin", "--block", "127.0.0.2"];
    let mut first = Blocker::start(&run);
    let (status, _) = first.stop(libc::SIGKILL);
    assert!(!status.success());
    let config_pin = Path::new("/sys/fs/bpf/cgroup-connect").join(&name).join(maps::CONFIG);
    let bytes = |v: u32| v.to_ne_bytes().map(|b| b.to_string());
    let key = bytes(config::TABLE_LAYOUT);
    let value = bytes(0);
    let out = std::process::Command::new("bpftool")
        .args(["map", "update", "pinned", config_pin.to_str().unwrap(), "key"])
        .args(&key)
        .arg("value")
        .args(&value)
        .output()
        .unwrap_or_else(|e| panic!("bpftool: {e}"));
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));

    let want = format!("instance {name} was pinned by another version of cgroup-connect");
    for args in [[&["run"][..], &run[..]].concat(), vec!["stats", &name]] {
        let out = blocker_output(&args, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} went ahead: {err}");
        assert!(err.contains(&want) && err.contains(&format!("blocker detach {name}")), "{err}");
    }
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked, "still enforcing");
    let _ = blocker_ok(&["detach", &name]);
    assert_nothing_attached(cg.path());
}
