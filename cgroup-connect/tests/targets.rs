//! Targets named as operators name them (`--unit`, `--container`, `--pid`, `--pod`): each
//! resolver against the directory layouts systemd, the container runtimes and kubelet make,
//! built as real cgroups in a test tree, and `blocker run` blocking by them.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
};

use cgroup_connect::target::{Resolver, Target, TargetError};
use common::{Blocker, blocker_ok, blocker_output, connect_in, listener, status_row, temp_cgroup};

const ID: &str = "5f1c0a9e3b7d4c2a8e6f1b0d9c3a7e5f2b4d6c8a0e1f3b5d7c9a2e4f6b8d0c1a";
const POD: &str = "0c0a3f0e-1111-2222-3333-444455556666";

/// Directories made below a test cgroup, removed deepest first on drop (before the cgroup).
struct Tree {
    root: PathBuf,
    made: Vec<PathBuf>,
}

impl Tree {
    fn new(root: &Path) -> Self {
        Self { root: root.to_owned(), made: vec![] }
    }

    /// Makes `relative` and its missing parents; returns its path.
    fn mkdir(&mut self, relative: &str) -> PathBuf {
        let mut path = self.root.clone();
        for part in Path::new(relative) {
            path.push(part);
            if !path.exists() {
                std::fs::create_dir(&path)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
                self.made.push(path.clone());
            }
        }
        path
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Resolves `target` in a fresh tree holding `layout` (plus `decoys`), from the layout alone.
fn resolve_in_layout(
    target: &Target,
    layout: &str,
    decoys: &[&str],
) -> (PathBuf, Result<PathBuf, TargetError>) {
    let cg = temp_cgroup();
    let mut tree = Tree::new(cg.path());
    let want = tree.mkdir(layout);
    for decoy in decoys {
        tree.mkdir(decoy);
    }
    let got = Resolver::layout_only(cg.path().to_owned()).resolve(target);
    (want, got)
}

#[test]
fn each_runtime_and_driver_layout_resolves() {
    require_privileges!();
    let unit = |n: &str| Target::Unit(n.to_owned());
    let container = |n: &str| Target::Container(n.to_owned());
    let pod = Target::Pod(POD.to_owned());
    let pod_ = POD.replace('-', "_");
    let cases: Vec<(Target, String, Vec<String>)> = vec![
        // systemd: services, scopes and nested slices, with a same-named decoy file elsewhere.
        (
            unit("web.service"),
            "system.slice/web.service".into(),
            vec!["system.slice/webx.service".into()],
        ),
        (unit("run-u7.scope"), "user.slice/user-1000.slice/run-u7.scope".into(), vec![]),
        (unit("a-b.slice"), "a.slice/a-b.slice".into(), vec!["a.slice/a-b.slice/x.service".into()]),
        // Docker: the systemd and the cgroupfs drivers.
        (container(&ID[..12]), format!("system.slice/docker-{ID}.scope"), vec![]),
        (container(ID), format!("docker/{ID}"), vec![]),
        // Podman: systemd driver (with crun's `container` child and conmon beside it), cgroupfs.
        (
            container(&ID[..16]),
            format!("machine.slice/libpod-{ID}.scope"),
            vec![
                format!("machine.slice/libpod-{ID}.scope/container"),
                format!("machine.slice/libpod-conmon-{ID}.scope"),
            ],
        ),
        (
            container(&ID[..12]),
            format!("libpod_parent/libpod-{ID}"),
            vec![format!("libpod_parent/conmon")],
        ),
        // containerd and CRI-O under kubelet.
        (
            container(&ID[..12]),
            format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_}.slice/cri-containerd-{ID}.scope"
            ),
            vec![],
        ),
        (
            container(&ID[..12]),
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_}.slice/crio-{ID}.scope"
            ),
            vec![format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_}.slice/crio-conmon-{ID}.scope"
            )],
        ),
        // kubelet: every QoS class, both drivers.
        (pod.clone(), format!("kubepods/pod{POD}"), vec![]),
        (pod.clone(), format!("kubepods/burstable/pod{POD}"), vec![]),
        (pod.clone(), format!("kubepods/besteffort/pod{POD}"), vec![]),
        (pod.clone(), format!("kubepods.slice/kubepods-pod{pod_}.slice"), vec![]),
        (
            pod.clone(),
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_}.slice"),
            vec![],
        ),
        (
            pod,
            format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_}.slice"),
            vec![],
        ),
    ];
    for (target, layout, decoys) in cases {
        let decoys: Vec<&str> = decoys.iter().map(String::as_str).collect();
        let (want, got) = resolve_in_layout(&target, &layout, &decoys);
        match got {
            Ok(got) => assert_eq!(got, want, "{target} in {layout}"),
            Err(e) => panic!("{target} in {layout}: {e}"),
        }
    }
}

#[test]
fn missing_and_ambiguous_targets_are_refused_by_name() {
    require_privileges!();
    let (_, got) =
        resolve_in_layout(&Target::Unit("gone.service".into()), "system.slice/other.service", &[]);
    let e = got.unwrap_err().to_string();
    assert!(e.contains("unit gone.service has no cgroup") && e.contains("is it running"), "{e}");

    let (_, got) = resolve_in_layout(
        &Target::Unit("twice.service".into()),
        "a.slice/twice.service",
        &["b.slice/twice.service"],
    );
    let e = got.unwrap_err().to_string();
    assert!(e.contains("matches 2 cgroups") && e.contains("a.slice/twice.service"), "{e}");

    let (_, got) = resolve_in_layout(&Target::Pod(POD.into()), "kubepods/burstable/podother", &[]);
    assert!(got.unwrap_err().to_string().contains(&format!("pod {POD} has no cgroup")));
}

/// A `sleep` moved into `cgroup`, killed on drop.
struct Sleeper(Child);

impl Sleeper {
    fn start_in(cgroup: &Path) -> Self {
        let child = Command::new("sleep").arg("60").spawn().expect("spawn sleep");
        std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string())
            .unwrap_or_else(|e| panic!("move sleep into {}: {e}", cgroup.display()));
        Self(child)
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn run_by_pid_blocks_in_that_process_cgroup_and_status_names_both() {
    require_privileges!();
    let cg = temp_cgroup();
    let sleeper = Sleeper::start_in(cg.path());
    let (_l, dst) = listener("127.0.0.41");
    let pid = sleeper.0.id().to_string();
    let mut blocker = Blocker::start(&["--pid", &pid, "--block", "127.0.0.41"]);
    let cg_path = cg.path().to_str().expect("utf-8 path");
    assert!(blocker.attached_line.contains(cg_path), "{}", blocker.attached_line);
    assert_eq!(connect_in(cg.path(), dst), Err(libc::EPERM));

    let row = status_row(&blocker.name);
    assert_eq!(row["target"], format!("pid {pid}"), "{row}");
    assert_eq!(row["cgroup"], cg_path, "{row}");
    let text = blocker_ok(&["status"]);
    assert!(text.contains(&format!("{cg_path} (pid {pid})")), "{text}");
    let (status, _) = blocker.stop(libc::SIGTERM);
    assert!(status.success());
}

#[test]
fn run_by_unit_finds_the_unit_cgroup_in_the_tree() {
    require_privileges!();
    let cg = temp_cgroup();
    let mut tree = Tree::new(cg.path());
    let unit = format!("cgroup-connect-test-{}.service", std::process::id());
    let dir = tree.mkdir(&format!("test.slice/{unit}"));
    let (_l, dst) = listener("127.0.0.42");
    let mut blocker = Blocker::start(&["--unit", &unit, "--block", "127.0.0.42"]);
    assert!(blocker.attached_line.contains(dir.to_str().unwrap()), "{}", blocker.attached_line);
    assert_eq!(connect_in(&dir, dst), Err(libc::EPERM));
    let (status, _) = blocker.stop(libc::SIGTERM);
    assert!(status.success());
}

#[test]
fn bad_and_unknown_targets_exit_2_naming_the_value() {
    require_privileges!();
    for (args, wanted) in [
        (vec!["--unit", "ssh.socket"], "bad unit name \"ssh.socket\""),
        (vec!["--pod", "../../etc"], "bad pod UID \"../../etc\""),
        (vec!["--container=-rm"], "bad container"),
        (vec!["--pod", POD], &*format!("pod {POD} has no cgroup")),
        (vec!["--pid", "1", "--cgroup", "/sys/fs/cgroup"], "cannot be used with"),
    ] {
        let mut full = vec!["run", "--name", "cgroup-connect-test-targets"];
        full.extend(&args);
        let out = blocker_output(&full, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(wanted), "{args:?}: {stderr}");
    }
}
