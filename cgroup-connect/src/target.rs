//! What `blocker run` protects, named as operators name it: a cgroup directory, a systemd unit,
//! a container, a process, or a Kubernetes pod. Owns the translation of each name into the
//! cgroup v2 directory that holds the workload now.
//!
//! Each kind is found from the layout the tool that made it uses, read from the cgroup tree
//! itself, so it works without asking the tool (and with systemd not PID 1, or a container
//! runtime whose daemon is down):
//! - a unit: the directory systemd names after it (`system.slice/nginx.service`), asked of
//!   systemd first when it is the init system;
//! - a container: the directory named after its ID by Docker, Podman, containerd or CRI-O, for
//!   both the systemd and the cgroupfs drivers; by name, the runtime (`docker`, `podman`,
//!   `crictl`) is asked for its init process, whose cgroup is the container's;
//! - a process: its line in /proc/PID/cgroup;
//! - a pod: kubelet's directory for it, for the systemd and cgroupfs drivers and every quality-of-service
//!   class.
use std::{
    fmt, io,
    path::{Component, Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::quote::{Quoted, ShortPath};

/// How deep below the cgroup root a search for a unit or container goes.
const MAX_DEPTH: usize = 12;
/// How many directories a search looks at before it gives up.
const MAX_DIRS: usize = 200_000;
/// How long a container runtime's command may take to answer.
const RUNTIME_TIMEOUT: Duration = Duration::from_secs(10);

/// The workload, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Target {
    /// `--unit NAME.service|.slice|.scope`
    Unit(String),
    /// `--container ID|NAME`
    Container(String),
    /// `--pid PID`
    Pid(u32),
    /// `--pod UID`
    Pod(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unit(name) => write!(f, "unit {name}"),
            Self::Container(name) => write!(f, "container {name}"),
            Self::Pid(pid) => write!(f, "pid {pid}"),
            Self::Pod(uid) => write!(f, "pod {uid}"),
        }
    }
}

/// Why a target names no cgroup.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not a unit name with a suffix that has a cgroup of its own.
    #[error("bad unit name {}: give NAME.service, NAME.slice or NAME.scope", Quoted(name))]
    BadUnit { name: String },
    /// Not a container ID or name.
    #[error(
        "bad container {}: give an ID (hexadecimal, 12 characters or more) or a name \
         (letters, digits, _ . -)",
        Quoted(name)
    )]
    BadContainer { name: String },
    /// Not a pod UID.
    #[error(
        "bad pod UID {}: give the pod's metadata.uid (32 hexadecimal digits, with or without dashes)",
        Quoted(uid)
    )]
    BadPod { uid: String },
    /// Nothing of that name has a cgroup now.
    #[error("{target} has no cgroup under {}: {why}", ShortPath(root))]
    NotFound { target: Target, root: PathBuf, why: &'static str },
    /// More than one cgroup matches.
    #[error(
        "{target} matches {} cgroups ({}): name it more exactly",
        paths.len(),
        ListPaths(paths)
    )]
    Ambiguous { target: Target, paths: Vec<PathBuf> },
    /// The process does not exist.
    #[error("no process with pid {pid}")]
    NoProcess { pid: u32 },
    /// The process sits in the root cgroup: attaching there would judge the whole machine.
    #[error(
        "{target} is in the root cgroup: refusing to judge the whole machine by a process's \
         name; pass --cgroup {} to mean that",
        ShortPath(root)
    )]
    RootCgroup { target: Target, root: PathBuf },
    /// A runtime knows the container, but it has no process.
    #[error("{target} is not running ({runtime} reports no process)")]
    NotRunning { target: Target, runtime: &'static str },
    /// Reading the cgroup tree or /proc failed.
    #[error("cannot read {}", ShortPath(path))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The paths of an ambiguous match, cut to a few.
struct ListPaths<'a>(&'a [PathBuf]);

impl fmt::Display for ListPaths<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, path) in self.0.iter().take(4).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", ShortPath(path))?;
        }
        if self.0.len() > 4 {
            write!(f, ", ...")?;
        }
        Ok(())
    }
}

/// Finds the cgroup of a [`Target`] under one cgroup v2 root.
#[derive(Clone, Debug)]
pub struct Resolver {
    root: PathBuf,
    ask_tools: bool,
}

impl Resolver {
    /// Resolves on this host: under its cgroup v2 mount, asking systemd and the container
    /// runtimes where the tree alone does not tell.
    #[must_use]
    pub fn host(root: PathBuf) -> Self {
        Self { root, ask_tools: true }
    }

    /// Resolves from the directory layout under `root` alone (a test tree).
    #[must_use]
    pub fn layout_only(root: PathBuf) -> Self {
        Self { root, ask_tools: false }
    }

    /// The cgroup directory that holds `target` now.
    ///
    /// # Errors
    /// A [`TargetError`] naming the target and what was looked for.
    pub fn resolve(&self, target: &Target) -> Result<PathBuf, TargetError> {
        match target {
            Target::Unit(name) => self.unit(target, name),
            Target::Container(name) => self.container(target, name),
            Target::Pid(pid) => self.pid(target, *pid),
            Target::Pod(uid) => self.pod(target, uid),
        }
    }

    /// Where the cgroup of `target`, which has none now, will be made: for a unit that is not
    /// running, the directory systemd makes when it starts (in the slice systemd names for it,
    /// `system.slice` when systemd does not say); for a stopped Docker or Podman container, the
    /// directory its runtime makes when it starts (from its full ID, cgroup parent and the
    /// runtime's cgroup driver). None for a unit that systemd, as the init system, does not
    /// know (a typo), a container no runtime knows, and for processes and pods, whose
    /// directory cannot be known before it is made.
    #[must_use]
    pub fn awaited(&self, target: &Target) -> Option<PathBuf> {
        if let Target::Container(name) = target {
            let relative = self.ask_tools.then(|| RUNTIMES.iter().find_map(|r| r.awaited(name)));
            return relative.flatten().map(|r| self.root.join(r));
        }
        let Target::Unit(name) = target else { return None };
        if self.ask_tools && systemd_property(name, "LoadState").as_deref() == Some("not-found") {
            return None;
        }
        if let Some(stem) = name.strip_suffix(".slice") {
            return Some(self.root.join(slice_path(stem)));
        }
        let slice = self
            .ask_tools
            .then(|| systemd_property(name, "Slice"))
            .flatten()
            .unwrap_or_else(|| "system.slice".to_owned());
        let stem =
            slice.strip_suffix(".slice").filter(|s| !s.is_empty() && unit_name(&slice).is_ok())?;
        Some(self.root.join(slice_path(stem)).join(name))
    }

    fn unit(&self, target: &Target, name: &str) -> Result<PathBuf, TargetError> {
        if self.ask_tools
            && let Some(path) = systemd_control_group(name)
        {
            let path = self.root.join(path.trim_start_matches('/'));
            if path.is_dir() {
                return Ok(path);
            }
        }
        if let Some(slice) = name.strip_suffix(".slice") {
            let path = self.root.join(slice_path(slice));
            return if path.is_dir() {
                Ok(path)
            } else {
                Err(self.not_found(
                    target,
                    "the slice has no running unit (systemd makes its cgroup when one starts)",
                ))
            };
        }
        let found = self.search(|dir| dir == name)?;
        self.one(target, found, "is it running? systemd removes a unit's cgroup when it stops")
    }

    fn container(&self, target: &Target, name: &str) -> Result<PathBuf, TargetError> {
        let id = name.to_ascii_lowercase();
        if is_container_id(&id) {
            let found =
                self.search(|dir| container_id(dir).is_some_and(|full| full.starts_with(&id)))?;
            if !found.is_empty() {
                return self.one(target, found, "");
            }
        }
        if self.ask_tools {
            for runtime in RUNTIMES {
                match runtime.init_pid(name) {
                    Some(0) => {
                        return Err(TargetError::NotRunning {
                            target: target.clone(),
                            runtime: runtime.tool,
                        });
                    }
                    Some(pid) => return self.pid(target, pid),
                    None => {}
                }
            }
        }
        Err(self.not_found(
            target,
            "no Docker, Podman, containerd or CRI-O cgroup has that ID, and no runtime \
             (docker, podman, crictl) knows a running container of that name",
        ))
    }

    fn pid(&self, target: &Target, pid: u32) -> Result<PathBuf, TargetError> {
        let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(TargetError::NoProcess { pid });
            }
            Err(source) => return Err(TargetError::Io { path: file, source }),
        };
        // The cgroup v2 line is `0::/path`; a zombie has none.
        let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
            return Err(TargetError::NoProcess { pid });
        };
        let relative = path.trim_start_matches('/');
        if relative.is_empty() {
            return Err(TargetError::RootCgroup {
                target: target.clone(),
                root: self.root.clone(),
            });
        }
        Ok(self.root.join(relative))
    }

    fn pod(&self, target: &Target, uid: &str) -> Result<PathBuf, TargetError> {
        let dashed = uid.to_ascii_lowercase();
        let underscored = dashed.replace('-', "_");
        let mut found = Vec::new();
        for class in ["", "burstable", "besteffort"] {
            // The cgroupfs driver: kubepods[/CLASS]/pod<uid>.
            let mut cgroupfs = self.root.join("kubepods");
            // The systemd driver: kubepods.slice[/kubepods-CLASS.slice]/kubepods[-CLASS]-pod<uid_>.slice.
            let mut systemd = self.root.join("kubepods.slice");
            let prefix = if class.is_empty() {
                "kubepods".to_owned()
            } else {
                cgroupfs.push(class);
                systemd.push(format!("kubepods-{class}.slice"));
                format!("kubepods-{class}")
            };
            cgroupfs.push(format!("pod{dashed}"));
            systemd.push(format!("{prefix}-pod{underscored}.slice"));
            found.extend([cgroupfs, systemd].into_iter().filter(|p| p.is_dir()));
        }
        self.one(target, found, "is the pod running on this node? (kubelet's cgroupfs and systemd layouts, every QoS class)")
    }

    fn not_found(&self, target: &Target, why: &'static str) -> TargetError {
        TargetError::NotFound { target: target.clone(), root: self.root.clone(), why }
    }

    /// The one match: the outermost when matches nest, an error when there is none or when
    /// unrelated directories match.
    fn one(
        &self,
        target: &Target,
        mut found: Vec<PathBuf>,
        why: &'static str,
    ) -> Result<PathBuf, TargetError> {
        found.sort();
        found.dedup();
        let outer: Vec<PathBuf> = found
            .iter()
            .filter(|p| !found.iter().any(|q| q != *p && p.starts_with(q)))
            .cloned()
            .collect();
        match <[PathBuf; 1]>::try_from(outer) {
            Ok([path]) => Ok(path),
            Err(outer) if outer.is_empty() => Err(self.not_found(target, why)),
            Err(outer) => Err(TargetError::Ambiguous { target: target.clone(), paths: outer }),
        }
    }

    /// Every directory under the root whose name `matches`, breadth first, bounded in depth
    /// and count; symbolic links are not followed (the cgroup filesystem has none).
    fn search(&self, matches: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, TargetError> {
        let mut found = Vec::new();
        let mut level = vec![self.root.clone()];
        let mut seen = 0;
        for _ in 0..MAX_DEPTH {
            let mut next = Vec::new();
            for dir in level {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    // Removed while we looked: a cgroup that went away holds nothing.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(TargetError::Io { path: dir, source }),
                };
                for entry in entries.flatten() {
                    if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    seen += 1;
                    if seen > MAX_DIRS {
                        return Ok(found);
                    }
                    let path = entry.path();
                    if entry.file_name().to_str().is_some_and(&matches) {
                        found.push(path.clone());
                    }
                    next.push(path);
                }
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        Ok(found)
    }
}

/// Checks a unit name and adds `.service` when it has no suffix, as systemctl does.
///
/// # Errors
/// [`TargetError::BadUnit`] for an empty name, a character systemd does not allow, or a unit
/// kind without processes of its own.
pub fn unit_name(name: &str) -> Result<String, TargetError> {
    let bad = || TargetError::BadUnit { name: name.to_owned() };
    let allowed = |c: char| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c);
    if name.is_empty() || name.len() > 255 || !name.chars().all(allowed) || name.starts_with('.') {
        return Err(bad());
    }
    match name.rsplit_once('.') {
        Some((stem, "service" | "slice" | "scope")) if !stem.is_empty() => Ok(name.to_owned()),
        Some((_, suffix)) if UNIT_SUFFIXES.contains(&suffix) => Err(bad()),
        _ => Ok(format!("{name}.service")),
    }
}

/// Unit kinds other than the three with processes of their own.
const UNIT_SUFFIXES: [&str; 8] =
    ["socket", "mount", "automount", "swap", "target", "path", "timer", "device"];

/// Checks a container ID or name.
///
/// # Errors
/// [`TargetError::BadContainer`].
pub fn container_name(name: &str) -> Result<String, TargetError> {
    let ok = name.len() <= 255
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok { Ok(name.to_owned()) } else { Err(TargetError::BadContainer { name: name.to_owned() }) }
}

/// Checks a pod UID: 32 hexadecimal digits, as a UUID with dashes or, for static pods, without.
///
/// # Errors
/// [`TargetError::BadPod`].
pub fn pod_uid(uid: &str) -> Result<String, TargetError> {
    let digits = uid.chars().filter(char::is_ascii_hexdigit).count();
    let ok = digits == 32 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if ok { Ok(uid.to_ascii_lowercase()) } else { Err(TargetError::BadPod { uid: uid.to_owned() }) }
}

/// Whether `name` can only be (a prefix of) a container ID.
fn is_container_id(name: &str) -> bool {
    (12..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The full container ID a directory is named after, in any runtime's layout: `docker-ID.scope`,
/// `libpod-ID.scope`, `cri-containerd-ID.scope`, `crio-ID.scope` (systemd driver), or `ID`,
/// `libpod-ID` (cgroupfs driver). Conmon's own cgroups (`libpod-conmon-ID`) are not the
/// container's and do not match.
fn container_id(dir: &str) -> Option<&str> {
    let stem = dir.strip_suffix(".scope").unwrap_or(dir);
    let id = ["docker-", "libpod-", "cri-containerd-", "crio-", "containerd-"]
        .iter()
        .find_map(|prefix| stem.strip_prefix(prefix))
        .unwrap_or(stem);
    (id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(id)
}

/// Where systemd puts a slice: `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`.
fn slice_path(stem: &str) -> PathBuf {
    if stem == "-" {
        return PathBuf::new();
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    path
}

/// The unit's `ControlGroup` as systemd reports it, when systemd is the init system and the
/// unit has one.
fn systemd_control_group(unit: &str) -> Option<String> {
    systemd_property(unit, "ControlGroup")
}

/// A property of a unit, as `systemctl show` gives it; None when systemd is not the init
/// system or the value is empty.
fn systemd_property(unit: &str, property: &str) -> Option<String> {
    // sd_booted(): systemd is PID 1.
    if !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let flag = format!("--property={property}");
    let out = run_tool("systemctl", &["show", &flag, "--value", "--", unit])?;
    let value = out.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// A container runtime's command, and how to ask it for a container's init process.
struct Runtime {
    tool: &'static str,
    args: &'static [&'static str],
}

const RUNTIMES: [Runtime; 3] = [
    Runtime {
        tool: "docker",
        args: &["inspect", "--type", "container", "--format", "{{.State.Pid}}", "--"],
    },
    Runtime {
        tool: "podman",
        args: &["inspect", "--type", "container", "--format", "{{.State.Pid}}", "--"],
    },
    Runtime {
        tool: "crictl",
        args: &["inspect", "--output", "go-template", "--template", "{{.info.pid}}"],
    },
];

impl Runtime {
    /// Where a stopped container's cgroup will be made, relative to the cgroup root: None when
    /// this runtime is absent, does not know the container, or is not Docker or Podman.
    fn awaited(&self, name: &str) -> Option<PathBuf> {
        let (info, prefix, scope_parent, dir_parent) = match self.tool {
            "docker" => (["info", "--format", "{{.CgroupDriver}}"], "docker-", "system", "docker"),
            "podman" => (
                ["info", "--format", "{{.Host.CgroupManager}}"],
                "libpod-",
                "machine",
                "libpod_parent",
            ),
            _ => return None,
        };
        let format = "{{.Id}} {{.HostConfig.CgroupParent}}";
        let out = run_tool(
            self.tool,
            &["inspect", "--type", "container", "--format", format, "--", name],
        )?;
        let mut words = out.split_whitespace();
        let id = words.next().filter(|id| container_id(id) == Some(id))?;
        let parent = words.next().unwrap_or_default().trim_matches('/');
        let safe = |p: &str| Path::new(p).components().all(|c| matches!(c, Component::Normal(_)));
        if !safe(parent) {
            return None;
        }
        match run_tool(self.tool, &info)?.trim() {
            "systemd" => {
                let slice = if parent.is_empty() { scope_parent } else { parent };
                let stem = slice.strip_suffix(".slice").unwrap_or(slice);
                Some(slice_path(stem).join(format!("{prefix}{id}.scope")))
            }
            "cgroupfs" => {
                let dir = if parent.is_empty() { dir_parent } else { parent };
                let name =
                    if self.tool == "docker" { id.to_owned() } else { format!("{prefix}{id}") };
                Some(Path::new(dir).join(name))
            }
            _ => None,
        }
    }

    /// The container's init pid (0 when it is stopped), or None when this runtime is absent or
    /// does not know the container.
    fn init_pid(&self, name: &str) -> Option<u32> {
        let mut args = self.args.to_vec();
        args.push(name);
        run_tool(self.tool, &args)?.trim().parse().ok()
    }
}

/// The standard output of `tool args`, when it is installed, exits 0 within
/// [`RUNTIME_TIMEOUT`], and prints UTF-8.
fn run_tool(tool: &str, args: &[&str]) -> Option<String> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + RUNTIME_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        assert_eq!(unit_name("nginx").unwrap(), "nginx.service");
        assert_eq!(unit_name("web.slice").unwrap(), "web.slice");
        assert_eq!(unit_name("getty@tty1.service").unwrap(), "getty@tty1.service");
        assert_eq!(unit_name("run-r1.scope").unwrap(), "run-r1.scope");
        for bad in ["", "a b.service", "ssh.socket", ".service", "x/y.service", "a.target"] {
            let e = unit_name(bad).unwrap_err().to_string();
            assert!(e.contains(".service, NAME.slice or NAME.scope"), "{bad}: {e}");
        }
    }

    #[test]
    fn slices_nest_by_dashes() {
        assert_eq!(slice_path("a-b-c"), PathBuf::from("a.slice/a-b.slice/a-b-c.slice"));
        assert_eq!(slice_path("system"), PathBuf::from("system.slice"));
        assert_eq!(slice_path("-"), PathBuf::new());
    }

    #[test]
    fn container_ids_in_every_layout() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for dir in [
            format!("docker-{id}.scope"),
            format!("libpod-{id}.scope"),
            format!("cri-containerd-{id}.scope"),
            format!("crio-{id}.scope"),
            format!("libpod-{id}"),
            id.to_owned(),
        ] {
            assert_eq!(container_id(&dir), Some(id), "{dir}");
        }
        for dir in
            [format!("libpod-conmon-{id}"), format!("crio-conmon-{id}.scope"), "docker".into()]
        {
            assert_eq!(container_id(&dir), None, "{dir}");
        }
    }

    #[test]
    fn names_and_uids() {
        assert!(container_name("web-1_a.b").is_ok());
        assert!(container_name("-x").is_err());
        assert!(container_name("a;b").is_err());
        assert_eq!(
            pod_uid("0C0A3F0E-1111-2222-3333-444455556666").unwrap(),
            "0c0a3f0e-1111-2222-3333-444455556666"
        );
        assert!(pod_uid("0c0a3f0e11112222333344445555666").is_err());
        assert!(pod_uid("../../etc").is_err());
        assert!(is_container_id("0123456789ab"));
        assert!(!is_container_id("web"));
    }
}
