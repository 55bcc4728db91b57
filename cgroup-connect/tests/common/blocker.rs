//! The real `blocker` binary: a guard around a running `blocker run`, and one-shot commands.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// Path of the blocker binary under test.
pub const BLOCKER: &str = env!("CARGO_BIN_EXE_blocker");

/// A unique instance name for a test.
#[must_use]
pub fn instance_name() -> String {
    super::unique_name("test")
}

/// A running `blocker run`. On drop: SIGKILL if the test did not stop it, then
/// `blocker detach NAME`, so no pin outlives the test.
pub struct Blocker {
    child: Child,
    /// The instance name (given with --name, or made unique).
    pub name: String,
    /// The line that began with "attached".
    pub attached_line: String,
    lines: mpsc::Receiver<String>,
}

impl Blocker {
    /// Starts `blocker run ARGS` (with a unique `--name` unless ARGS has one) and waits (up
    /// to 90 s) for its `attached` line.
    #[must_use]
    pub fn start(args: &[&str]) -> Self {
        Self::start_in(std::path::Path::new("."), args)
    }

    /// Starts `blocker run --cgroup CGROUP --block BLOCK ARGS --events FILE`, FILE being
    /// `events.jsonl` in a temporary folder of its own (tagged `tag`). Returns the blocker, the
    /// folder (it lives as long as the tuple: the blocker drops first) and the file.
    #[must_use]
    pub fn with_events(
        cgroup: &std::path::Path,
        block: &str,
        tag: &str,
        args: &[&str],
    ) -> (Self, super::TempDir, PathBuf) {
        let dir = super::TempDir::new(tag);
        let file = dir.path().join("events.jsonl");
        let cgroup = cgroup.to_str().unwrap();
        let fixed = ["--cgroup", cgroup, "--block", block, "--events", file.to_str().unwrap()];
        (Self::start(&[&fixed[..], args].concat()), dir, file)
    }

    /// Like [`Blocker::start`], from the folder `cwd`.
    #[must_use]
    pub fn start_in(cwd: &std::path::Path, args: &[&str]) -> Self {
        Self::spawn(cwd, &[], args)
    }

    /// Like [`Blocker::start`], run through `wrapper` (`setpriv ... --`), which must exec the
    /// blocker in its own process.
    #[must_use]
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> Self {
        Self::spawn(std::path::Path::new("."), wrapper, args)
    }

    /// Like [`Blocker::start`] for a cgroup that is not made yet: waits for the line that
    /// begins with "waiting for cgroup" instead (kept as `attached_line`).
    #[must_use]
    pub fn start_waiting(args: &[&str]) -> Self {
        Self::spawn_until(std::path::Path::new("."), &[], args, "waiting for cgroup")
    }

    fn spawn(cwd: &std::path::Path, wrapper: &[&str], args: &[&str]) -> Self {
        Self::spawn_until(cwd, wrapper, args, "attached")
    }

    fn spawn_until(cwd: &std::path::Path, wrapper: &[&str], args: &[&str], first: &str) -> Self {
        let name = match args.iter().position(|a| *a == "--name") {
            Some(i) => args[i + 1].to_owned(),
            None => instance_name(),
        };
        let mut full: Vec<&str> = args.to_vec();
        if !args.contains(&"--name") {
            full.extend(["--name", &name]);
        }
        let (program, before) = wrapper.split_first().map_or((BLOCKER, &[][..]), |(p, r)| (*p, r));
        let mut child = Command::new(program)
            .args(before)
            .args(if wrapper.is_empty() { None } else { Some(BLOCKER) })
            .current_dir(cwd)
            .arg("run")
            .args(&full)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BLOCKER}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        // With `--events -` the status lines (attached, reloaded, ...) go to stderr, the
        // events to stdout: both are read, into one stream of lines.
        let events_on_stdout = args.windows(2).any(|w| w == ["--events", "-"]);
        if events_on_stdout {
            let stderr = child.stderr.take().expect("piped stderr");
            forward_lines(stderr, tx.clone());
        }
        forward_lines(stdout, tx);
        // A start that fails leaves no guard to detach: whatever it pinned is removed here.
        let leftover = name.clone();
        let stderr = move |child: Child| {
            let out = child.wait_with_output().unwrap_or_else(|e| panic!("collect output: {e}"));
            detach_quietly(&leftover);
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        let deadline = Instant::now() + START_WITHIN;
        loop {
            match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with(first) => {
                    return Self { child, name, attached_line: line, lines };
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "blocker {args:?} exited with {status} before attaching: {}",
                            stderr(child)
                        );
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    panic!("blocker {args:?} did not attach ({e:?}): {}", stderr(child));
                }
            }
        }
    }

    /// Its pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (0: none, just wait) and waits (up to 10 s) for the exit; returns the
    /// status and the rest of stdout. The guard stays: its drop still detaches the instance.
    pub fn stop(&mut self, signal: i32) -> (ExitStatus, Vec<String>) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        if signal != 0 {
            // SAFETY: pid is our own child, still unreaped.
            unsafe { libc::kill(pid, signal) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) =
                self.child.try_wait().unwrap_or_else(|e| panic!("wait for blocker {pid}: {e}"))
            {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "blocker did not exit within 10 s of signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let rest = self.lines.try_iter().collect();
        (status, rest)
    }

    /// Everything it printed on stderr; call it after [`Blocker::stop`] (it reads to the end).
    pub fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut text);
        }
        text
    }

    /// Lines printed since the `attached` line, waiting up to `wait` for one that contains
    /// `wanted` (returns all read, the match last).
    pub fn wait_for_line(&self, wanted: &str, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(wanted) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for Blocker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        detach_quietly(&self.name);
    }
}

/// Sends each line `from` gives to `to`, on a thread of its own.
fn forward_lines(from: impl std::io::Read + Send + 'static, to: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if to.send(line).is_err() {
                break;
            }
        }
    });
}

/// `blocker detach NAME`, ignoring "no instance".
pub fn detach_quietly(name: &str) {
    let _ = Command::new(BLOCKER)
        .args(["detach", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs the blocker to completion with `args` (it must exit within 90 s), as user and group
/// `uid` when given.
#[must_use]
pub fn blocker_output(args: &[&str], uid: Option<u32>) -> Output {
    // Another user may not be able to reach target/ (a checkout in /root or in a `mktemp -d`
    // folder): that user runs a copy in a folder of root's that everyone may enter.
    let copy = uid.map(|_| reachable_copy());
    let program = copy.as_ref().map_or_else(|| BLOCKER.into(), |(_, path)| path.clone());
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    if let Some(uid) = uid {
        as_user(&mut cmd, uid);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // A child another thread forks while the copy is written holds its write end until it
    // exits: exec then fails with ETXTBSY for a moment (at most 5 s of retries).
    let mut tries = 0;
    let mut child = loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 250 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            spawned => break spawned.unwrap_or_else(|e| panic!("spawn blocker: {e}")),
        }
    };
    assert!(
        wait_within(&mut child, Duration::from_secs(90)).is_some(),
        "blocker {args:?} did not exit within 90 s"
    );
    child.wait_with_output().unwrap_or_else(|e| panic!("collect output of blocker {args:?}: {e}"))
}

/// How long a start may take before a test calls it a hang: 90 s. Under qemu TCG on 6.1, with
/// other tests starting blockers beside it, the verifier alone takes 15 s or more for the
/// programs (`blocker doctor`, which loads and attaches them all: 18 s there, 4.5 s on 6.12).
pub const START_WITHIN: Duration = Duration::from_secs(90);

/// Waits up to `within` for `child` to exit; kills it (and returns None) if it does not.
pub fn wait_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("wait for a child: {e}")) {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes `cmd` run as user and group `uid`, with no supplementary groups.
pub fn as_user(cmd: &mut Command, uid: u32) -> &mut Command {
    // SAFETY: setgroups/setgid/setuid are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A copy of the blocker, mode 0755, in a new folder of root's, mode 0755 (removed on drop).
fn reachable_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("cgroup-connect-bin-")
        .tempdir()
        .unwrap_or_else(|e| panic!("temporary folder for the blocker: {e}"));
    let path = dir.path().join("blocker");
    std::fs::copy(BLOCKER, &path).unwrap_or_else(|e| panic!("copy {BLOCKER}: {e}"));
    for p in [dir.path(), path.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
    }
    (dir, path)
}

/// The object of instance `name` in `blocker status --json`.
#[must_use]
pub fn status_row(name: &str) -> serde_json::Value {
    let text = blocker_ok(&["status", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&text).expect("status JSON");
    let row = rows.as_array().and_then(|r| r.iter().find(|r| r["name"] == name)).cloned();
    row.unwrap_or_else(|| panic!("no instance {name} in {text}"))
}

/// Runs `blocker ARGS`, expecting success, and returns its standard output.
#[must_use]
pub fn blocker_ok(args: &[&str]) -> String {
    let out = blocker_output(args, None);
    assert!(out.status.success(), "blocker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes `cmd` run with a seccomp filter under which the `bpf()` command `bpf_cmd` fails with
/// `errno` (the kernel refuses it, as it may refuse a load or an attach).
pub fn refusing_bpf(cmd: &mut Command, bpf_cmd: u32, errno: u16) -> &mut Command {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let nr = u32::try_from(libc::SYS_bpf).expect("syscall number fits u32");
    // seccomp_data: the syscall number at offset 0, its first argument at 16 (low half).
    let filter = [
        insn(LD_W_ABS, 0, 0, 0),
        insn(JEQ_K, 0, 3, nr),
        insn(LD_W_ABS, 0, 0, 16),
        insn(JEQ_K, 0, 1, bpf_cmd),
        insn(RET_K, 0, 0, RET_ERRNO | u32::from(errno)),
        insn(RET_K, 0, 0, RET_ALLOW),
    ];
    // SAFETY: prctl with a filter that lives in the closure; async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: u16::try_from(filter.len()).expect("six instructions"),
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &raw const prog) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Asserts that nothing of instance `name` is left: no pins, no state folder, not in
/// `blocker status`.
pub fn assert_no_instance(name: &str) {
    for dir in ["/sys/fs/bpf/cgroup-connect", "/run/cgroup-connect"] {
        let path = std::path::Path::new(dir).join(name);
        assert!(!path.exists(), "{} left behind", path.display());
    }
    let status = blocker_ok(&["status", "--json"]);
    assert!(!status.contains(&format!("\"{name}\"")), "{name} in status: {status}");
}
