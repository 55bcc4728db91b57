//! A private mount namespace where the pin and state roots can be made by another user first,
//! as on a machine where bpffs or /run is world-writable, without touching the real ones
//! (which other tests, and other instances, use at the same time).
use std::{ffi::CString, process::Command};

/// What is mounted on /sys/fs/bpf in [`in_private_mounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpfMount {
    /// A fresh bpffs of mode 1777, as some distributions mount it.
    WorldWritable,
    /// A tmpfs, not bpffs: the blocker mounts bpffs itself.
    NotBpffs,
}

/// Runs `work` on a thread of its own, in a new mount namespace with `bpf` on /sys/fs/bpf and a
/// tmpfs of mode 1777 on /run. What the thread spawns runs in that namespace; the namespace
/// and everything made in it go when the thread and its programs end, even on a panic.
pub fn in_private_mounts<T: Send>(bpf: BpfMount, work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare affects this thread only (CLONE_NEWNS implies CLONE_FS).
                let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
                assert_eq!(rc, 0, "unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
                mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None);
                match bpf {
                    BpfMount::WorldWritable => {
                        mount(Some("bpf"), "/sys/fs/bpf", Some("bpf"), 0, Some("mode=1777"));
                    }
                    BpfMount::NotBpffs => {
                        mount(Some("tmpfs"), "/sys/fs/bpf", Some("tmpfs"), 0, Some("mode=0755"));
                    }
                }
                mount(Some("tmpfs"), "/run", Some("tmpfs"), 0, Some("mode=1777"));
                work()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Runs `work` as [`in_private_mounts`] does (the blocker mounts bpffs itself), with the test
/// cgroup `cgroup` as the only cgroup v2 mount, at /run/cgroup-root: the blocker takes it for
/// the root of the tree, so a layout that names fixed places under the root (systemd's
/// `system.slice/NAME.service`) is built in a test cgroup, never in the real tree.
pub fn in_private_cgroup_root<T: Send>(
    cgroup: &std::path::Path,
    work: impl FnOnce(&std::path::Path) -> T + Send,
) -> T {
    in_private_mounts(BpfMount::NotBpffs, || {
        let root = std::path::Path::new("/run/cgroup-root");
        std::fs::create_dir(root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
        let from = cgroup.to_str().expect("utf-8 path");
        mount(Some(from), "/run/cgroup-root", None, libc::MS_BIND, None);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let others: Vec<&str> = mountinfo
            .lines()
            .filter(|l| l.split_once(" - ").is_some_and(|(_, r)| r.starts_with("cgroup2 ")))
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| *m != "/run/cgroup-root")
            .collect();
        for point in others {
            let target = CString::new(point).expect("no NUL");
            // SAFETY: a valid C string; this mount namespace is the thread's own.
            let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            assert_eq!(rc, 0, "umount {point}: {}", std::io::Error::last_os_error());
        }
        work(root)
    })
}

fn mount(source: Option<&str>, target: &str, fstype: Option<&str>, flags: u64, data: Option<&str>) {
    let c = |s: &str| CString::new(s).expect("no NUL");
    let (source, target, fstype, data) = (source.map(c), c(target), fstype.map(c), data.map(c));
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: valid C strings or null, as mount(2) takes them.
    let rc = unsafe {
        libc::mount(ptr(&source), target.as_ptr(), ptr(&fstype), flags, ptr(&data).cast())
    };
    assert_eq!(rc, 0, "mount {target:?}: {}", std::io::Error::last_os_error());
}

/// Runs `program ARGS` as user and group nobody (65534), with no other groups, expecting success.
pub fn as_nobody(program: &str, args: &[&str]) {
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", program])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run setpriv (util-linux): {e}"));
    assert!(out.status.success(), "as nobody: {program} {args:?}: {out:?}");
}
