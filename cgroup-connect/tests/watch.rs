//! `run --watch`: a policy changed on disk is reloaded, whether a Kubernetes `ConfigMap` volume
//! swaps it (a new `..data` symlink renamed over the old one) or an editor replaces it by a
//! rename; a bad new file keeps the old policy and says why.
mod common;

use std::{os::unix::fs::symlink, path::Path, time::Duration};

use common::{Blocker, TempDir, blocker_output, connect_in, listener, temp_cgroup};

fn policy_blocking(addr: &str) -> String {
    format!("[[rule]]\naction = \"block\"\ndst = \"{addr}\"\n")
}

/// Writes `text` as `policy.toml` the way kubelet updates a `ConfigMap` volume: a new
/// timestamped folder, a `..data_tmp` link to it renamed over `..data`, the old folder removed.
fn configmap_update(dir: &Path, version: u32, text: &str) {
    let data = dir.join(format!("..2026_11_29_{version}"));
    std::fs::create_dir(&data).expect("configmap data folder");
    std::fs::write(data.join("policy.toml"), text).expect("configmap file");
    let tmp = dir.join("..data_tmp");
    symlink(data.file_name().expect("name"), &tmp).expect("..data_tmp link");
    std::fs::rename(&tmp, dir.join("..data")).expect("rename ..data_tmp over ..data");
    if version > 0 {
        let old = dir.join(format!("..2026_11_29_{}", version - 1));
        std::fs::remove_dir_all(old).expect("remove the old data folder");
    }
}

#[test]
fn configmap_swaps_and_renames_reload_and_a_bad_file_keeps_the_old_policy() {
    require_privileges!();
    let cg = temp_cgroup();
    let dir = TempDir::new("watch");
    let (_a, first) = listener("127.0.0.61");
    let (_b, second) = listener("127.0.0.62");
    configmap_update(dir.path(), 0, &policy_blocking("127.0.0.61"));
    symlink("..data/policy.toml", dir.path().join("policy.toml")).expect("policy.toml link");
    let policy = dir.path().join("policy.toml");
    let cg_path = cg.path().to_str().expect("utf-8 path");
    let mut blocker =
        Blocker::start(&["--cgroup", cg_path, "--policy", policy.to_str().unwrap(), "--watch"]);
    assert_eq!(connect_in(cg.path(), first), Err(libc::EPERM));
    assert_eq!(connect_in(cg.path(), second), Ok(()));

    // A ConfigMap update: no event names policy.toml itself.
    configmap_update(dir.path(), 1, &policy_blocking("127.0.0.62"));
    let line = blocker.wait_for_line("files changed on disk, reloaded", Duration::from_secs(10));
    assert!(line.is_some(), "no reload after the ConfigMap swap");
    assert_eq!(connect_in(cg.path(), first), Ok(()));
    assert_eq!(connect_in(cg.path(), second), Err(libc::EPERM));

    // A bad file: the old policy stays in force, and the reason is printed.
    configmap_update(dir.path(), 2, "[[rule]]\naction = \"block\"\ndst = \"127.0.0.300\"\n");
    // An editor's save: a new file renamed over the old one (here over the link).
    std::thread::sleep(Duration::from_millis(500));
    let tmp = dir.path().join("policy.toml.tmp");
    std::fs::write(&tmp, policy_blocking("127.0.0.61")).expect("new file");
    assert_eq!(connect_in(cg.path(), second), Err(libc::EPERM), "the bad file changed nothing");
    std::fs::rename(&tmp, &policy).expect("rename over policy.toml");
    let line = blocker.wait_for_line("files changed on disk, reloaded", Duration::from_secs(10));
    assert!(line.is_some(), "no reload after the rename");
    assert_eq!(connect_in(cg.path(), first), Err(libc::EPERM));
    assert_eq!(connect_in(cg.path(), second), Ok(()));

    let (status, _) = blocker.stop(libc::SIGTERM);
    assert!(status.success());
    let stderr = blocker.stderr();
    assert!(
        stderr.contains("files changed on disk, reloaded failed, the old policy stays in force")
            && stderr.contains("127.0.0.300"),
        "{stderr}"
    );
}

#[test]
fn watch_without_a_file_is_refused_before_anything_attaches() {
    require_privileges!();
    let cg = temp_cgroup();
    let out = blocker_output(
        &["run", "--cgroup", cg.path().to_str().unwrap(), "--block", "127.0.0.63", "--watch"],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--watch needs a file to watch"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("attached"));
}
