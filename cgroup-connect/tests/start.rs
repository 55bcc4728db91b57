//! Starts that fail or are stopped: every check runs and everything is opened before anything
//! attaches, so such a start never says `attached` and leaves no instance behind.
mod common;

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    BLOCKER, TempDir, assert_no_instance, assert_nothing_attached, blocker_output, detach_quietly,
    instance_name, refusing_bpf, temp_cgroup, wait_within,
};

/// `bpf()` commands (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: u32 = 5;
const BPF_LINK_CREATE: u32 = 28;

/// Runs `blocker run ARGS --name NAME` in `cmd`'s setting to completion (30 s at most) and
/// checks that it failed before attaching and left nothing: returns its exit code and stderr.
fn fails_leaving_nothing(
    mut cmd: Command,
    cgroup: &std::path::Path,
    args: &[&str],
) -> (i32, String) {
    let name = instance_name();
    let mut child = cmd
        .arg("run")
        .args(["--cgroup", cgroup.to_str().unwrap(), "--name", &name])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn blocker run {args:?}: {e}"));
    // A start the kernel refuses loads every program first: as slow as a start (TCG, 6.1).
    if wait_within(&mut child, common::START_WITHIN).is_none() {
        detach_quietly(&name);
        panic!("blocker run {args:?} did not exit within {:?}", common::START_WITHIN);
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("blocker output: {e}"));
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let left = std::panic::catch_unwind(|| assert_no_instance(&name));
    detach_quietly(&name);
    assert!(!out.status.success(), "{args:?} started: {stdout}");
    assert!(!stdout.contains("attached"), "{args:?} said attached, then failed: {stdout}{stderr}");
    assert_nothing_attached(cgroup);
    if let Err(e) = left {
        std::panic::resume_unwind(e);
    }
    (out.status.code().unwrap_or(-1), stderr.into_owned())
}

#[test]
fn a_busy_metrics_port_fails_before_attaching() {
    require_privileges!();
    let cg = temp_cgroup();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) =
        fails_leaving_nothing(Command::new(BLOCKER), cg.path(), &["--metrics", &addr]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&addr) && err.contains("in use"), "{err}");
}

#[test]
fn an_events_file_in_a_missing_folder_fails_before_attaching() {
    require_privileges!();
    let cg = temp_cgroup();
    let dir = TempDir::new("events-missing");
    let file = dir.path().join("missing/events.jsonl");
    let args = ["--block", "127.0.0.2", "--events", file.to_str().unwrap()];
    let (code, err) = fails_leaving_nothing(Command::new(BLOCKER), cg.path(), &args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot open the events file") && err.contains("missing"), "{err}");
}

/// The kernel refuses the programs (seccomp makes `BPF_PROG_LOAD` fail), or their attach
/// (`BPF_LINK_CREATE`, after the maps are made and pinned): either way nothing stays.
#[test]
fn a_refused_load_or_attach_leaves_nothing() {
    require_privileges!();
    let cg = temp_cgroup();
    for (what, bpf_cmd, errno) in
        [("load", BPF_PROG_LOAD, libc::EPERM), ("attach", BPF_LINK_CREATE, libc::EBADF)]
    {
        let mut cmd = Command::new(BLOCKER);
        refusing_bpf(&mut cmd, bpf_cmd, u16::try_from(errno).unwrap());
        let (code, err) = fails_leaving_nothing(cmd, cg.path(), &["--block", "127.0.0.2"]);
        assert!(code == 1 || code == 3, "{what}: exit {code}: {err}");
        assert!(err.starts_with("blocker: error: "), "{what}: {err}");
    }
}

/// A policy of a million rules in a form that only the TOML parser reads (seconds):
/// SIGTERM during the parse ends the process at once, with nothing made.
#[test]
fn sigterm_during_a_long_parse_ends_the_start() {
    require_privileges!();
    let cg = temp_cgroup();
    let dir = TempDir::new("long-parse");
    let path = dir.path().join("policy.toml");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(file, "rule = [").unwrap();
    for i in 0..1_000_000u32 {
        let addr = std::net::Ipv4Addr::from(0x0a00_0000 + 2 * i);
        writeln!(file, "  {{ action = 'block', dst = '{addr}' }},").unwrap();
    }
    writeln!(file, "]").unwrap();
    file.into_inner().unwrap().sync_all().unwrap();
    let name = instance_name();
    let mut child = Command::new(BLOCKER)
        .args(["run", "--cgroup", cg.path().to_str().unwrap(), "--name", &name])
        .args(["--policy", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn blocker run: {e}"));
    // Once it runs more than one thread (the verifier, the parser), it is inside the start.
    let tasks = format!("/proc/{}/task", child.id());
    for _ in 0..1500 {
        if std::fs::read_dir(&tasks).map_or(0, Iterator::count) > 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: a signal to our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = wait_within(&mut child, Duration::from_secs(5));
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let left = std::panic::catch_unwind(|| assert_no_instance(&name));
    detach_quietly(&name);
    let status = status.unwrap_or_else(|| panic!("blocker ignored SIGTERM for 5 s: {stdout}"));
    assert_eq!(status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("stopped before attaching"), "{stdout}");
    assert_nothing_attached(cg.path());
    if let Err(e) = left {
        std::panic::resume_unwind(e);
    }
    let out = blocker_output(&["status"], None);
    assert!(out.status.success());
}
