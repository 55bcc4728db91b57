//! Bad input ends with one clear message that names the value, a documented exit code, and
//! nothing attached; `blocker doctor` passes on this machine.
mod common;

use common::{Blocker, assert_nothing_attached, blocker_output, temp_cgroup};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn invalid_ip_is_a_usage_error() {
    require_privileges!();
    let cg = temp_cgroup();
    let out = blocker_output(
        &["run", "--cgroup", cg.path().to_str().unwrap(), "--block-ip", "10.0.0.300"],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("10.0.0.300"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
    assert_nothing_attached(cg.path());
}

#[test]
fn missing_directory_is_named() {
    require_privileges!();
    let dir = common::cgroup_root().join("cgroup-connect-test-does-not-exist");
    let out = blocker_output(&["run", "--cgroup", dir.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains(dir.to_str().unwrap()) && err.contains("does not exist"), "{err}");
    assert_eq!(err.lines().count(), 1, "one message: {err}");
}

/// A missing directory beside the cgroup v2 tree (on a hybrid host, /sys/fs/cgroup/x when the
/// tree is at /sys/fs/cgroup/unified) is not to be made there: the message says where the
/// tree is, and where the directory belongs.
#[test]
fn missing_directory_off_the_cgroup2_tree_names_the_tree() {
    require_privileges!();
    let root = common::cgroup_root();
    let name = "cgroup-connect-test-does-not-exist";
    let dir =
        root.parent().unwrap_or_else(|| panic!("{} has no parent", root.display())).join(name);
    let out = blocker_output(&["run", "--cgroup", dir.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    let tree = format!("is not on the cgroup v2 tree, which is mounted at {}", root.display());
    assert!(err.contains(dir.to_str().unwrap()) && err.contains(&tree), "{err}");
    assert!(err.contains(&format!("use {}", root.join(name).display())), "{err}");
    assert!(!err.contains("mkdir"), "{err}");
    assert_eq!(err.lines().count(), 1, "one message: {err}");
}

/// `--cgroup` as a relative path with `..` is stored resolved and absolute: `status` shows
/// it so, and the instance is adopted from another folder by its absolute path.
#[test]
fn cgroup_paths_are_stored_resolved_and_absolute() {
    require_privileges!();
    let cg = temp_cgroup();
    let (parent, leaf) = (cg.path().parent().unwrap(), cg.path().file_name().unwrap());
    let leaf = leaf.to_str().unwrap();
    let relative = format!("./{leaf}/../{leaf}");
    let name = common::instance_name();
    let mut first = Blocker::start_in(parent, &["--cgroup", &relative, "--name", &name, "--pin"]);
    let absolute = cg.path().to_str().unwrap();
    assert!(
        first.attached_line.contains(&format!("cgroup {absolute} ")),
        "{}",
        first.attached_line
    );
    let out = blocker_output(&["status", "--json"], None);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["name"] == name.as_str());
    assert_eq!(row.map(|r| r["cgroup"].clone()), Some(absolute.into()), "{rows}");
    let (status, _) = first.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    let again = Blocker::start(&["--cgroup", absolute, "--name", &name]);
    assert!(again.attached_line.contains(absolute), "{}", again.attached_line);
}

/// A cgroup v1 controller directory if this machine has one, else a plain directory: both are
/// "not on a cgroup v2 mount".
#[test]
fn directory_not_on_cgroup2_is_refused() {
    require_privileges!();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let v1 = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split(' ').next()? == "cgroup").then(|| left.split(' ').nth(4).unwrap().to_owned())
    });
    let plain = std::env::temp_dir();
    let mut dirs = vec![plain.to_str().unwrap().to_owned()];
    if let Some(v1) = v1 {
        dirs.push(v1);
    } else {
        eprintln!("note: no cgroup v1 mount here; checking a plain directory only");
    }
    for dir in dirs {
        let out = blocker_output(&["run", "--cgroup", &dir], None);
        assert_eq!(out.status.code(), Some(2), "{dir}: {out:?}");
        let err = stderr(&out);
        assert!(err.contains(&dir) && err.contains("not on a cgroup v2 mount"), "{err}");
    }
}

#[test]
fn a_file_is_not_a_cgroup() {
    require_privileges!();
    let out = blocker_output(&["run", "--cgroup", "/proc/self/mountinfo"], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("/proc/self/mountinfo is not a directory"), "{}", stderr(&out));
}

#[test]
fn unprivileged_user_is_told_what_is_missing() {
    require_privileges!();
    let cg = temp_cgroup();
    let out = blocker_output(
        &["run", "--cgroup", cg.path().to_str().unwrap(), "--block-ip", "127.0.0.2"],
        Some(65534),
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("CAP_BPF") && err.contains("root"), "{err}");
    assert_nothing_attached(cg.path());
}

/// Without root every verb that reads instances says to run as root and exits 3, instead of
/// "no instances", "no instance named" or a bare "Permission denied".
#[test]
fn every_verb_without_root_says_to_run_as_root() {
    require_privileges!();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["list", "default"],
        &["add", "default", "192.0.2.1"],
        &["remove", "default", "192.0.2.1"],
        &["reload", "default"],
        &["detach", "default"],
        &["events", "default"],
        &["stats", "default"],
    ] {
        let out = blocker_output(args, Some(65534));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.contains("run as root") && err.contains("CAP_BPF"), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one message: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn doctor_passes_here() {
    require_privileges!();
    let out = blocker_output(&["doctor"], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "doctor failed:\n{stdout}\n{}", stderr(&out));
    for check in [
        "kernel",
        "bpf-syscall",
        "cgroup2",
        "cgroup-bpf",
        "btf",
        "jit",
        "capabilities",
        "memlock",
        "nightly",
        "rust-src",
        "bpf-linker",
    ] {
        assert!(
            stdout.lines().any(|l| l.split_whitespace().nth(1) == Some(check)),
            "no {check} line:\n{stdout}"
        );
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn doctor_as_unprivileged_user_fails_with_fixes() {
    require_privileges!();
    let out = blocker_output(&["doctor"], Some(65534));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let caps =
        stdout.lines().find(|l| l.contains("capabilities")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(caps.starts_with("FAIL") && caps.contains("fix:"), "{caps}");
}

/// When stderr is systemd's journal stream (`JOURNAL_STREAM` names its device and inode), each
/// logged line carries its syslog priority (`<3>` error, `<4>` warning) for journald; anywhere
/// else the line is unchanged.
#[test]
fn log_lines_carry_their_priority_for_the_journal() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = common::TempDir::new("journal");
    let run = |journal: bool| {
        let path = dir.path().join(format!("stderr-{journal}"));
        let file = std::fs::File::create(&path).unwrap();
        let meta = file.metadata().unwrap();
        let mut cmd = std::process::Command::new(common::BLOCKER);
        cmd.args(["run", "--cgroup", "/nonexistent-cgroup-connect"]).stderr(file);
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        } else {
            cmd.env("JOURNAL_STREAM", "1:1");
        }
        let status = cmd.status().unwrap();
        assert_eq!(status.code(), Some(2));
        std::fs::read_to_string(&path).unwrap()
    };
    let plain = run(false);
    assert!(plain.starts_with("blocker: error: ") && plain.contains("/nonexistent"), "{plain}");
    assert_eq!(run(true), format!("<3>{plain}"));
}
