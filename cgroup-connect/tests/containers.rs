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
    made_parent: Option<PathBuf>,
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(["--runtime", "runc"]).args(args).output().unwrap_or_else(|e| {
        panic!("podman {args:?}: {e} (scripts/setup.sh installs podman and runc)")
    })
}

impl Container {
    /// Runs `sleep` in a busybox root folder, on the host's network.
    fn start(rootfs: &Path) -> Self {
        let name = format!("cgroup-connect-test-{}", std::process::id());
        let parent = common::cgroup_root().join("libpod_parent");
        let made_parent = (!parent.exists()).then_some(parent);
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
        let this = Self { name, id, made_parent };
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
        if let Some(parent) = &self.made_parent {
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
