//! Network namespaces holding the test addresses, so probe traffic never leaves the machine.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A network namespace with `lo` up and the given addresses (CIDR, e.g. "192.0.2.0/24") on it,
/// deleted on drop. Traffic to those addresses stays inside it.
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Makes the namespace.
    #[must_use]
    pub fn new(addrs: &[&str]) -> Self {
        let name = super::unique_name("cgc-test");
        ip(&["netns", "add", &name]);
        let this = Self { path: PathBuf::from("/run/netns").join(&name), name };
        ip(&["-n", &this.name, "link", "set", "lo", "up"]);
        for addr in addrs {
            ip(&["-n", &this.name, "addr", "add", addr, "dev", "lo"]);
            if addr.contains(':') {
                // IPv4 prefixes on lo are local as a whole; IPv6 ones need a local route.
                ip(&["-n", &this.name, "-6", "route", "add", "local", addr, "dev", "lo"]);
            }
        }
        this
    }

    /// Its name, for `ip -n`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its path under /run/netns, for `setns`.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on a new thread that entered the namespace (a thread's namespace is its
    /// own: the test runner's other threads stay where they are), and returns what it gave:
    /// sockets made there stay in the namespace, so a test's servers can listen in it.
    pub fn run_in<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let ns = std::fs::File::open(&self.path)
            .unwrap_or_else(|e| panic!("open netns {}: {e}", self.path.display()));
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    use std::os::fd::AsRawFd as _;
                    // SAFETY: setns on an fd this thread holds; it moves only this thread.
                    let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
                    work()
                })
                .join()
                .unwrap_or_else(|_| panic!("a thread in netns {} panicked", self.name))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Runs `ip ARGS`, expecting success.
pub fn ip(args: &[&str]) {
    let out =
        Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
