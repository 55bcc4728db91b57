//! A cgroup removed and made anew at the same path (what a service restart does): the serving
//! process says it waits and attaches to the new directory; a restart of a pinned instance
//! checks where its links point and attaches again.
mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{Blocker, blocker_ok, connect_in, listener, status_row, temp_cgroup};

/// A plain child directory of a test cgroup that the test removes and makes again; removed on
/// drop if it is still there.
struct Recreated(PathBuf);

impl Recreated {
    fn new(parent: &Path) -> Self {
        let path = parent.join("service");
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self(path)
    }

    fn remove(&self) {
        std::fs::remove_dir(&self.0).unwrap_or_else(|e| panic!("rmdir {}: {e}", self.0.display()));
    }

    fn make(&self) {
        std::fs::create_dir(&self.0).unwrap_or_else(|e| panic!("mkdir {}: {e}", self.0.display()));
    }
}

impl Drop for Recreated {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The `state` of instance `name` in `blocker status --json`.
fn status_of(name: &str) -> String {
    status_row(name)["state"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_cgroup_made_anew_is_followed_and_status_says_when_it_waits() {
    require_privileges!();
    let cg = temp_cgroup();
    let service = Recreated::new(cg.path());
    let (_l, dst) = listener("127.0.0.51");
    let path = service.0.to_str().expect("utf-8 path");
    let blocker = Blocker::start(&["--cgroup", path, "--block", "127.0.0.51"]);
    assert_eq!(connect_in(&service.0, dst), Err(libc::EPERM));

    service.remove();
    let line = blocker.wait_for_line("waiting for cgroup", Duration::from_secs(5));
    assert!(line.as_deref().is_some_and(|l| l.contains(path)), "{line:?}");
    assert_eq!(status_of(&blocker.name), "waiting");
    let text = blocker_ok(&["status"]);
    assert!(text.contains(&format!("{}: waiting for cgroup {path}", blocker.name)), "{text}");

    // A process moved in as soon as the directory exists, probing until it is judged: how
    // long the new cgroup goes unjudged is printed (docs/performance.md has the figures).
    service.make();
    let made = Instant::now();
    let mut first_allowed = 0;
    let judged = loop {
        match connect_in(&service.0, dst) {
            Err(libc::EPERM) => break Some(made.elapsed()),
            _ if made.elapsed() > Duration::from_secs(5) => break None,
            _ => first_allowed += 1,
        }
    };
    let judged = judged.unwrap_or_else(|| panic!("the cgroup made anew is not judged after 5 s"));
    eprintln!("judged {judged:?} after mkdir; {first_allowed} connects went through before");
    let line = blocker.wait_for_line("re-attached to cgroup", Duration::from_secs(5));
    assert!(line.is_some(), "no re-attached line");
    assert_eq!(status_of(&blocker.name), "running");
    for _ in 0..3 {
        assert_eq!(connect_in(&service.0, dst), Err(libc::EPERM));
    }
}

#[test]
fn a_pinned_instance_whose_cgroup_was_made_anew_is_stale_until_run_attaches_it_again() {
    require_privileges!();
    let cg = temp_cgroup();
    let service = Recreated::new(cg.path());
    let (_l, dst) = listener("127.0.0.52");
    let path = service.0.to_str().expect("utf-8 path");
    let mut first = Blocker::start(&["--cgroup", path, "--pin", "--block", "127.0.0.52"]);
    let name = first.name.clone();
    let _ = first.stop(libc::SIGKILL);
    assert_eq!(connect_in(&service.0, dst), Err(libc::EPERM), "pinned: enforcing after SIGKILL");

    service.remove();
    service.make();
    // Honest: the new directory is not judged, and status does not say it is.
    assert_eq!(connect_in(&service.0, dst), Ok(()));
    assert_eq!(status_of(&name), "stale");

    let second =
        Blocker::start(&["--cgroup", path, "--pin", "--name", &name, "--block", "127.0.0.52"]);
    assert!(
        second.attached_line.contains("re-attached: the cgroup was made anew"),
        "{}",
        second.attached_line
    );
    assert_eq!(connect_in(&service.0, dst), Err(libc::EPERM));
    assert_eq!(status_of(&name), "running");
    drop(second);
    drop(first);
}
