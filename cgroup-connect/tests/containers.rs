//! `--container` with a real container: Podman (with runc, which also works on hybrid cgroup
//! hosts) runs busybox from a folder, and the blocker finds its cgroup by name (Podman is
//! asked for its init process) and by ID (from the directory layout). Runs on the host only:
//! the kernel matrix's guests have no container runtime.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::{Blocker, TempDir, listener};

/// A container of ours, removed (with the parent cgroup Podman made for it, if it made it) on
/// drop.
struct Container {
    name: String,
    id: String,
}

/// Podman's cgroup parent (cgroupfs manager), if this test binary saw it missing before its
/// first container made it: then every container's drop tries to remove it, and the last
/// one out succeeds (tests run in parallel, so the first to end finds it busy).
fn made_parent() -> Option<&'static PathBuf> {
    static MADE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let parent = common::cgroup_root().join("libpod_parent");
        (!parent.exists()).then_some(parent)
    })
    .as_ref()
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(["--runtime", "runc"]).args(args).output().unwrap_or_else(|e| {
        panic!("podman {args:?}: {e} (scripts/setup.sh installs podman and runc)")
    })
}

impl Container {
    /// Runs `sleep` in a busybox root folder, on the host's network.
    fn start(rootfs: &Path) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("cgroup-connect-test-{}-{n}", std::process::id());
        made_parent();
        let root = rootfs.to_str().expect("utf-8 path");
        // Limits the sandbox allows anywhere: Podman's defaults may exceed the hard limits.
        let out = podman(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "host",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--rootfs",
            root,
            "/bin/sleep",
            "120",
        ]);
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let this = Self { name, id };
        assert!(out.status.success(), "podman run: {}", String::from_utf8_lossy(&out.stderr));
        this
    }

    /// `nc` from inside the container: Ok when it connected (it then waits for data, and
    /// `timeout` ends it after a second, with SIGTERM: status 143), or its error text.
    fn connect(&self, dst: std::net::SocketAddr) -> Result<(), String> {
        let (ip, port) = (dst.ip().to_string(), dst.port().to_string());
        let out = podman(&["exec", &self.name, "/bin/timeout", "1", "/bin/nc", &ip, &port]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.code() == Some(143) && stderr.is_empty() { Ok(()) } else { Err(stderr) }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.name]);
        if let Some(parent) = made_parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// A root folder with a static busybox and the applets the test uses.
fn busybox_root(dir: &TempDir) -> PathBuf {
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin folder");
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .unwrap_or_else(|e| panic!("copy /bin/busybox (apt busybox-static): {e}"));
    for applet in ["sh", "sleep", "nc", "timeout"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
    }
    dir.path().to_owned()
}

#[test]
fn a_podman_container_is_found_by_name_and_by_id_and_blocked() {
    require_privileges!();
    let dir = TempDir::new("rootfs");
    let container = Container::start(&busybox_root(&dir));
    let (_a, denied) = listener("127.0.0.71");
    let (_b, allowed) = listener("127.0.0.72");
    assert_eq!(container.connect(allowed), Ok(()), "before the blocker");

    for target in [container.name.clone(), container.id[..12].to_owned()] {
        let mut blocker = Blocker::start(&["--container", &target, "--block", "127.0.0.71"]);
        assert!(
            blocker.attached_line.contains(&container.id),
            "{target}: {}",
            blocker.attached_line
        );
        let refused = container.connect(denied);
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("not permitted")),
            "{target}: {refused:?}"
        );
        assert_eq!(container.connect(allowed), Ok(()), "{target}");
        let (status, _) = blocker.stop(libc::SIGTERM);
        assert!(status.success());
    }
    assert_eq!(container.connect(denied), Ok(()), "after the blocker");
}

/// Whether a directory named after container `id` is in the cgroup tree, two levels down
/// (where Podman's and Docker's layouts put it).
fn has_cgroup(id: &str) -> bool {
    let root = common::cgroup_root();
    let entries = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    };
    entries(&root)
        .iter()
        .filter(|p| p.is_dir())
        .flat_map(|p| entries(p).into_iter().chain(std::iter::once(p.clone())))
        .any(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(id)))
}

#[test]
fn a_stopped_podman_container_is_waited_for_and_judged_once_it_starts() {
    require_privileges!();
    let dir = TempDir::new("rootfs");
    let container = Container::start(&busybox_root(&dir));
    let (_a, denied) = listener("127.0.0.73");
    let (_b, allowed) = listener("127.0.0.74");
    let out = podman(&["stop", "-t", "0", &container.name]);
    assert!(out.status.success(), "podman stop: {}", String::from_utf8_lossy(&out.stderr));
    // Podman removes the container's cgroup soon after it stops.
    for _ in 0..100 {
        if !has_cgroup(&container.id) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!has_cgroup(&container.id), "the stopped container's cgroup stays");

    let mut blocker =
        Blocker::start_waiting(&["--container", &container.name, "--block", "127.0.0.73"]);
    let line = &blocker.attached_line;
    let stopped = format!("container {} is not running", container.name);
    assert!(line.contains(&container.id) && line.contains(&stopped), "{line}");
    assert_eq!(common::status_row(&blocker.name)["state"], "waiting");

    let out = podman(&["start", &container.name]);
    assert!(out.status.success(), "podman start: {}", String::from_utf8_lossy(&out.stderr));
    let line = blocker.wait_for_line("attached to cgroup", std::time::Duration::from_secs(10));
    assert!(line.as_deref().is_some_and(|l| l.contains(&container.id)), "{line:?}");
    let refused = container.connect(denied);
    assert!(refused.as_ref().is_err_and(|e| e.contains("not permitted")), "{refused:?}");
    assert_eq!(container.connect(allowed), Ok(()));
    let (status, _) = blocker.stop(libc::SIGTERM);
    assert!(status.success());
}
