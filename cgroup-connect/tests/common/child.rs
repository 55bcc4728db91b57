//! The one way the tests run code inside a cgroup: a forked child moves itself in (and into a
//! network namespace when asked), does its work and reports a number back. The test runner
//! itself never joins a cgroup: parallel tests would share its block.
use std::{
    fs::{File, OpenOptions},
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

/// Exit codes of a child that did not get to report.
const NO_CGROUP: i32 = 200;
const NO_NETNS: i32 = 201;
const NO_SETUP: i32 = 202;
const NO_REPORT: i32 = 203;

/// Forks a child that joins `cgroup` (None: stays in the test runner's), then enters `netns`
/// (in that order: joining needs the cgroup2 mount, which `ip netns exec` would hide), runs
/// `work` and returns the number it gave. `work` returns None when it could not set itself up.
/// Panics, naming `what`, if the child could not join, set up or report.
///
/// The test runner has other threads, so `work` must make only async-signal-safe calls (raw
/// syscalls) and use memory prepared before the fork: no allocation, no locks, no printing.
pub fn in_child(
    what: &str,
    cgroup: Option<&Path>,
    netns: Option<&Path>,
    work: impl Fn() -> Option<u32>,
) -> u32 {
    let procs = cgroup.map(|cg| {
        OpenOptions::new()
            .write(true)
            .open(cg.join("cgroup.procs"))
            .unwrap_or_else(|e| panic!("{what}: open {}/cgroup.procs: {e}", cg.display()))
    });
    let ns = netns.map(|ns| {
        File::open(ns).unwrap_or_else(|e| panic!("{what}: open netns {}: {e}", ns.display()))
    });
    let procs_fd = procs.as_ref().map(File::as_raw_fd);
    let ns_fd = ns.as_ref().map(File::as_raw_fd);
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two fds. Close-on-exec keeps the write end out of the programs that
    // other tests spawn meanwhile.
    let piped = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(piped, 0, "{what}: pipe: {}", io::Error::last_os_error());
    // SAFETY: pipe2 made these two fds, and nothing else owns them.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child calls only async-signal-safe syscalls (and `work`, which must too) on
    // memory prepared before the fork, then _exit()s without running destructors; the parent
    // reaps it.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "{what}: fork: {}", io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: as above; the child only writes to fds it inherited, then _exit()s.
        unsafe {
            if let Some(fd) = procs_fd
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                libc::_exit(NO_CGROUP);
            }
            if let Some(fd) = ns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                libc::_exit(NO_NETNS);
            }
            let Some(result) = work() else { libc::_exit(NO_SETUP) };
            let sent = libc::write(write_end.as_raw_fd(), (&raw const result).cast(), 4);
            libc::_exit(if sent == 4 { 0 } else { NO_REPORT });
        }
    }
    drop(write_end);
    let mut status = 0;
    // SAFETY: our own child, not reaped yet.
    let reaped = unsafe { libc::waitpid(pid, &raw mut status, 0) };
    assert_eq!(reaped, pid, "{what}: waitpid: {}", io::Error::last_os_error());
    assert!(libc::WIFEXITED(status), "{what}: child died: status {status}");
    match libc::WEXITSTATUS(status) {
        0 => {}
        NO_CGROUP => panic!("{what}: the child could not join cgroup {cgroup:?}"),
        NO_NETNS => panic!("{what}: the child could not enter netns {netns:?}"),
        NO_SETUP => panic!("{what}: the child could not set up (no socket?)"),
        code => panic!("{what}: the child could not report (exit {code})"),
    }
    // Read only once the child is reaped: its result is in the pipe then, and a child that
    // wrote nothing cannot leave the read waiting on write ends that other forks inherited.
    let mut result = 0u32;
    // SAFETY: reads at most four bytes into `result`.
    let n = unsafe { libc::read(read_end.as_raw_fd(), (&raw mut result).cast(), 4) };
    assert_eq!(n, 4, "{what}: the child reported nothing: {}", io::Error::last_os_error());
    result
}
