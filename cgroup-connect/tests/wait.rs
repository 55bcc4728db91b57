//! A cgroup that does not exist yet (`run --wait-for-cgroup`, a unit that is not running):
//! everything is loaded, checked and pinned first, then the blocker waits and attaches as soon
//! as the directory is made. A process that makes the cgroup, moves itself in and connects at
//! once is judged; how many of its connects got through before, and how long after the
//! `mkdir` it was judged (the window), are printed (docs/design.md has the figures).
mod common;

use std::{
    ffi::CString,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use common::{
    Blocker, assert_no_instance, assert_nothing_attached, blocker_ok, blocker_output, connect_in,
    in_child, in_private_cgroup_root, instance_name, status_row, temp_cgroup,
};

/// How many times the cgroup is made anew after the first attach, to measure the window.
const RUNS: usize = 10;

/// Directories a test expects to be made; removed deepest first on drop (once empty).
struct Made(Vec<PathBuf>);

impl Drop for Made {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// What a process that makes the cgroup, moves itself in and connects in a loop saw.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Connects that were not refused with EPERM before the first that was.
    through: u32,
    /// From just before the first `mkdir` to the first EPERM.
    judged_after: Duration,
}

/// The largest time the child reports, in microseconds (22 bits: 4.19 s).
const MAX_US: u32 = (1 << 22) - 1;
/// The most connects the child counts (10 bits), one less than what marks "never judged".
const MAX_THROUGH: u32 = (1 << 10) - 2;
/// The child's report when no connect was refused within 4 s.
const NEVER: u32 = u32::MAX;

/// Forks a child that makes `dirs` (those not there), moves itself into the last, and connects
/// to `dst` (where nothing listens: refused at once while unjudged) until one fails with EPERM,
/// for at most 4 s; returns what it saw. Panics if no connect was judged.
fn make_join_and_connect(dirs: &[&Path], dst: SocketAddr) -> Window {
    let c = |p: &Path| CString::new(p.to_str().expect("utf-8 path")).expect("no NUL");
    let made: Vec<CString> = dirs.iter().map(|d| c(d)).collect();
    let procs = c(&dirs.last().expect("a cgroup").join("cgroup.procs"));
    let addr = socket2::SockAddr::from(dst);
    let what = format!("make {}, join it and connect", dirs.last().unwrap().display());
    let report = in_child(&what, None, None, || {
        // SAFETY: raw syscalls on memory prepared before the fork (see `in_child`).
        unsafe {
            let mut start: libc::timespec = std::mem::zeroed();
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut start);
            for dir in &made {
                if libc::mkdir(dir.as_ptr(), 0o755) != 0
                    && *libc::__errno_location() != libc::EEXIST
                {
                    return None;
                }
            }
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return None;
            }
            libc::close(fd);
            let mut through: u32 = 0;
            loop {
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let rc = libc::connect(s, addr.as_ptr().cast(), addr.len());
                let errno = *libc::__errno_location();
                libc::close(s);
                let mut now: libc::timespec = std::mem::zeroed();
                libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now);
                let us =
                    (now.tv_sec - start.tv_sec) * 1_000_000 + (now.tv_nsec - start.tv_nsec) / 1_000;
                let us = u32::try_from(us).unwrap_or(MAX_US).min(MAX_US);
                if rc != 0 && errno == libc::EPERM {
                    return Some((through.min(MAX_THROUGH) << 22) | us);
                }
                if us >= 4_000_000 {
                    return Some(NEVER);
                }
                through += 1;
            }
        }
    });
    assert_ne!(report, NEVER, "{what}: no connect was judged within 4 s of the mkdir");
    Window {
        through: report >> 22,
        judged_after: Duration::from_micros(u64::from(report & MAX_US)),
    }
}

/// The median and the worst of `values`.
fn median_and_worst<T: Ord + Copy>(mut values: Vec<T>) -> (T, T) {
    values.sort_unstable();
    (values[values.len() / 2], values[values.len() - 1])
}

#[test]
fn a_cgroup_made_after_the_start_judges_a_process_moved_in_right_after_the_mkdir() {
    require_privileges!();
    let cg = temp_cgroup();
    let (outer, inner) = (cg.path().join("app"), cg.path().join("app/main"));
    let _made = Made(vec![outer.clone(), inner.clone()]);
    let path = inner.to_str().expect("utf-8 path");
    let dst: SocketAddr = "127.0.0.61:9".parse().unwrap();
    let blocker =
        Blocker::start_waiting(&["--cgroup", path, "--wait-for-cgroup", "--block", "127.0.0.61"]);
    let line = &blocker.attached_line;
    assert!(line.contains(path) && line.contains("it does not exist yet"), "{line}");
    let row = status_row(&blocker.name);
    assert_eq!(row["state"], "waiting", "{row}");
    assert_eq!(row["cgroup"], path, "{row}");
    let text = blocker_ok(&["status"]);
    let waiting = format!("{}: waiting for cgroup {path}: not made yet", blocker.name);
    assert!(text.contains(&waiting), "{text}");
    assert_nothing_attached(cg.path());

    // Both missing levels are made by the probe itself, which moves in and connects at once.
    let mut windows = vec![make_join_and_connect(&[&outer, &inner], dst)];
    let line = blocker.wait_for_line("attached to cgroup", Duration::from_secs(5));
    assert!(line.as_deref().is_some_and(|l| l.contains(path)), "{line:?}");
    assert_eq!(status_row(&blocker.name)["state"], "running");
    assert_eq!(connect_in(&inner, dst), Err(libc::EPERM));

    // Removed and made anew: the same window, through the same code.
    for _ in 0..RUNS {
        std::fs::remove_dir(&inner).unwrap_or_else(|e| panic!("rmdir {path}: {e}"));
        let line = blocker.wait_for_line("waiting for cgroup", Duration::from_secs(5));
        assert!(line.is_some(), "no waiting line after rmdir");
        windows.push(make_join_and_connect(&[&inner], dst));
        let line = blocker.wait_for_line("re-attached to cgroup", Duration::from_secs(5));
        assert!(line.is_some(), "no re-attached line");
    }
    let (through, worst_through) = median_and_worst(windows.iter().map(|w| w.through).collect());
    let (after, worst_after) = median_and_worst(windows.iter().map(|w| w.judged_after).collect());
    eprintln!(
        "window over {} makes: connects through before judged: median {through}, worst \
         {worst_through}; judged after the mkdir: median {after:?}, worst {worst_after:?}",
        windows.len()
    );
}

#[test]
fn sigterm_while_waiting_leaves_nothing_even_pinned() {
    require_privileges!();
    let cg = temp_cgroup();
    let later = cg.path().join("later");
    let path = later.to_str().expect("utf-8 path");
    let mut blocker = Blocker::start_waiting(&[
        "--cgroup",
        path,
        "--wait-for-cgroup",
        "--pin",
        "--block",
        "127.0.0.62",
    ]);
    assert_eq!(status_row(&blocker.name)["state"], "waiting");
    let (status, mut rest) = blocker.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    rest.extend(blocker.wait_for_line("stopped while waiting", Duration::from_secs(2)));
    let said =
        |l: &String| l.contains("stopped while waiting") && l.contains("nothing was attached");
    assert!(rest.iter().any(said), "{rest:?}");
    assert_no_instance(&blocker.name);
    assert_nothing_attached(cg.path());
    assert!(!later.exists(), "the blocker made the cgroup it waited for");
}

#[test]
fn a_missing_cgroup_is_refused_without_the_flag_and_a_bad_path_even_with_it() {
    require_privileges!();
    let cg = temp_cgroup();
    let name = instance_name();
    let base = cg.path().to_str().expect("utf-8 path");
    let missing = format!("{base}/missing");
    let dotdot = format!("{base}/../{}/x", cg.path().file_name().unwrap().to_str().unwrap());
    let file = format!("{base}/cgroup.procs/x");
    for (args, wanted) in [
        (vec!["--cgroup", &missing], "does not exist"),
        (vec!["--cgroup", &missing], "--wait-for-cgroup"),
        (vec!["--cgroup", &dotdot, "--wait-for-cgroup"], "goes through `..`"),
        (vec!["--cgroup", "/tmp/cgroup-connect-nowhere/x", "--wait-for-cgroup"], "cgroup v2 tree"),
        (vec!["--cgroup", &file, "--wait-for-cgroup"], "Not a directory"),
        (vec!["--pid", "999999999", "--wait-for-cgroup"], "no process"),
    ] {
        let mut full = vec!["run", "--name", &name, "--block", "127.0.0.64"];
        full.extend(&args);
        let out = blocker_output(&full, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(wanted), "{args:?}: {stderr}");
    }
    assert_no_instance(&name);
    assert_nothing_attached(cg.path());
}

#[test]
fn a_unit_that_is_not_running_is_waited_for_where_systemd_makes_its_cgroup() {
    require_privileges!();
    let cg = temp_cgroup();
    let unit = format!("cgroup-connect-test-{}.service", std::process::id());
    // The test cgroup is the whole tree here: system.slice is made in it, not in the real one.
    in_private_cgroup_root(cg.path(), |root| {
        let (slice, dir) = (root.join("system.slice"), root.join("system.slice").join(&unit));
        let _made = Made(vec![slice.clone(), dir.clone()]);
        let path = dir.to_str().expect("utf-8 path");
        let dst: SocketAddr = "127.0.0.63:9".parse().unwrap();
        let mut blocker = Blocker::start_waiting(&["--unit", &unit, "--block", "127.0.0.63"]);
        let line = &blocker.attached_line;
        assert!(
            line.contains(path) && line.contains(&format!("unit {unit} is not running")),
            "{line}"
        );
        let row = status_row(&blocker.name);
        assert_eq!(row["state"], "waiting", "{row}");
        assert_eq!(row["target"], format!("unit {unit}"), "{row}");

        // systemd starts the unit: it makes the slice and the unit's cgroup, moves the process in.
        let window = make_join_and_connect(&[&slice, &dir], dst);
        eprintln!("unit started: {window:?}");
        let line = blocker.wait_for_line("attached to cgroup", Duration::from_secs(5));
        assert!(line.as_deref().is_some_and(|l| l.contains(path)), "{line:?}");
        assert_eq!(connect_in(&dir, dst), Err(libc::EPERM));
        let (status, _) = blocker.stop(libc::SIGTERM);
        assert!(status.success(), "{status}");
    });
}

/// Under systemd (`Type=notify`): while it waits, only `STATUS=waiting for cgroup DIR`;
/// `READY=1` comes with the attach, when the cgroup is made.
#[test]
fn tells_systemd_ready_only_once_attached() {
    require_privileges!();
    let cg = temp_cgroup();
    let later = cg.path().join("later");
    let _made = Made(vec![later.clone()]);
    let dir = common::TempDir::new("notify");
    let notify = common::NotifySocket::bind(dir.path());
    let name = instance_name();
    let path = later.to_str().expect("utf-8 path");
    let mut child = std::process::Command::new(common::BLOCKER)
        .args(["run", "--cgroup", path, "--wait-for-cgroup", "--name", &name])
        .args(["--block", "127.0.0.65"])
        .env("NOTIFY_SOCKET", notify.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let next = || notify.next();
    let waiting = next();
    std::fs::create_dir(&later).unwrap_or_else(|e| panic!("mkdir {path}: {e}"));
    let ready = next();
    let judged = connect_in(&later, "127.0.0.65:9".parse().unwrap());
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let status = common::wait_within(&mut child, Duration::from_secs(10));
    common::detach_quietly(&name);
    assert_eq!(waiting, format!("STATUS=waiting for cgroup {path}\n"));
    assert_eq!(ready, "READY=1\nSTATUS=enforcing 1 rules (1 IPv4, 0 IPv6 prefixes)\n");
    assert_eq!(judged, Err(libc::EPERM), "enforcing once ready");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
