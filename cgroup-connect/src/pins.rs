//! Where instances live: every bpffs and /run path is built here.
//!
//! - `/sys/fs/bpf/cgroup-connect/NAME/` holds the instance's pinned maps (always, while it
//!   runs) and, with `--pin`, its pinned links (then it outlives the process).
//! - `/run/cgroup-connect/NAME/` holds its state (`state.json`: cgroup, policy sources, live
//!   edits, mode, process), the record of its rules in force (`rules`), a lock file that
//!   serializes changes and one that the events reader holds (`events-reader`).
//!
//! Both folders are root-only (0700). bpffs cannot hold plain files, hence the two places;
//! both are cleared at reboot, as the kernel objects are.
//!
//! The blocker makes these folders itself and trusts nothing it did not make: every component
//! of their paths, from `/`, must be a folder owned by root, opened without following a
//! symbolic link. Another user who made `/sys/fs/bpf/cgroup-connect` first (bpffs is often
//! mode 1777) could otherwise unpin an instance's links, which silently ends enforcement.
use std::{
    ffi::OsStr,
    fs, io,
    os::fd::OwnedFd,
    path::{Component, Path, PathBuf},
};

use rustix::{
    fs::{AtFlags, CWD, FileType, Mode, OFlags},
    io::Errno,
};

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The folder of all instances' pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/cgroup-connect";
/// The folder of all instances' state.
pub const STATE_ROOT: &str = "/run/cgroup-connect";
/// The instance name when none is given.
pub const DEFAULT_NAME: &str = "default";
/// Name of the state file in an instance's state folder.
const STATE_FILE: &str = "state.json";
/// Name of the lock file in an instance's state folder.
const LOCK_FILE: &str = "lock";
/// Name of the events reader's lock file in an instance's state folder.
const READER_FILE: &str = "events-reader";

/// A bad instance name, or a failure to prepare the folders.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "invalid instance name {}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'",
        crate::quote::Quoted(name)
    )]
    Name { name: String },
    #[error("no instance named {name:?}: `blocker status` lists them")]
    NoInstance { name: String },
    #[error("cannot mount bpffs on {BPFFS}: mount it with `mount -t bpf bpf {BPFFS}`")]
    Mount(#[source] io::Error),
    #[error(
        "unsafe path {}: it {problem}; the blocker makes its folders itself, owned by root: remove it and try again",
        path.display()
    )]
    Unsafe { path: PathBuf, problem: Unsafety },
    #[error("cannot prepare {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What makes a path unsafe to keep pins or state in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unsafety {
    #[error("is a symbolic link")]
    Symlink,
    #[error("is not a folder")]
    NotAFolder,
    #[error("is owned by uid {0}, not root")]
    Owner(u32),
}

/// The paths of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancePaths {
    pub name: String,
    /// Its bpffs folder.
    pub pins: PathBuf,
    /// Its state folder.
    pub state: PathBuf,
}

impl InstancePaths {
    /// The paths of instance `name`, after checking the name.
    ///
    /// # Errors
    /// [`PinError::Name`] for a name that is not a plain folder name.
    pub fn new(name: &str) -> Result<Self, PinError> {
        let ok = (1..=64).contains(&name.len())
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(PinError::Name { name: name.to_owned() });
        }
        Ok(Self {
            name: name.to_owned(),
            pins: Path::new(PIN_ROOT).join(name),
            state: Path::new(STATE_ROOT).join(name),
        })
    }

    /// The pin of map `map`.
    #[must_use]
    pub fn map(&self, map: &str) -> PathBuf {
        self.pins.join(map)
    }

    /// The pin of the link of program `program`.
    #[must_use]
    pub fn link(&self, program: &str) -> PathBuf {
        self.pins.join(format!("link_{program}"))
    }

    /// The pin of program `program`: a cgroup made anew gets the same programs attached
    /// again, also by a process that adopted the instance.
    #[must_use]
    pub fn program(&self, program: &str) -> PathBuf {
        self.pins.join(format!("prog_{program}"))
    }

    /// The state file.
    #[must_use]
    pub fn state_file(&self) -> PathBuf {
        self.state.join(STATE_FILE)
    }

    /// The record of the rules in force ([`crate::record`]).
    #[must_use]
    pub fn rules_file(&self) -> PathBuf {
        self.state.join(crate::record::RULES_FILE)
    }

    /// The lock file of the events reader ([`crate::events::ReaderClaim`]).
    #[must_use]
    pub fn reader_file(&self) -> PathBuf {
        self.state.join(READER_FILE)
    }

    /// The lock file.
    #[must_use]
    pub fn lock_file(&self) -> PathBuf {
        self.state.join(LOCK_FILE)
    }

    /// Whether the instance has pinned links (it enforces without a process).
    #[must_use]
    pub fn has_pinned_links(&self) -> bool {
        cgroup_connect_common::programs::LINKED.iter().any(|p| self.link(p).exists())
    }

    /// Whether every program of the instance is pinned (instances made by earlier builds pinned
    /// only maps and links); the DNS forwarder's are pinned only with one, and reloaded when
    /// missing.
    #[must_use]
    pub fn has_pinned_programs(&self) -> bool {
        cgroup_connect_common::programs::DECIDING.iter().all(|p| self.program(p).exists())
    }

    /// Whether anything of the instance exists.
    #[must_use]
    pub fn exists(&self) -> bool {
        self.pins.exists() || self.state_file().exists()
    }

    /// Makes both folders (root-only), mounting bpffs first if needed, and checks every
    /// component of their paths (see [`private_dir`]).
    ///
    /// # Errors
    /// [`PinError::Unsafe`] naming a path that is a symbolic link, not a folder or not root's,
    /// or another [`PinError`] naming the folder that could not be made.
    pub fn create_dirs(&self) -> Result<(), PinError> {
        ensure_bpffs()?;
        private_dir(Path::new(BPFFS), &self.pins)?;
        private_dir(Path::new(RUN), &self.state)?;
        Ok(())
    }

    /// Makes the folder that holds every instance's state folder ([`STATE_ROOT`]), as
    /// [`create_dirs`](Self::create_dirs) does.
    ///
    /// # Errors
    /// [`PinError::Unsafe`] or [`PinError::Io`], as for `create_dirs`.
    pub fn create_state_root() -> Result<(), PinError> {
        private_dir(Path::new(RUN), Path::new(STATE_ROOT))?;
        Ok(())
    }

    /// Checks the components of both folders that exist, as [`create_dirs`](Self::create_dirs)
    /// does, without making or changing anything: commands that use an existing instance call
    /// it before they trust its pins or state.
    ///
    /// # Errors
    /// [`PinError::Unsafe`] or [`PinError::Io`], as for `create_dirs`.
    pub fn check_dirs(&self) -> Result<(), PinError> {
        for dir in [&self.pins, &self.state] {
            walk(dir, None)?;
        }
        Ok(())
    }
}

/// The folder that holds [`STATE_ROOT`].
const RUN: &str = "/run";

/// Makes folder `dir` and the folders between it and `base` (which must exist), each mode
/// 0700, and opens it. Every component from `/` is opened without following a symbolic link
/// and must be a folder owned by root; the mode is set through the opened folder, never
/// through a path.
///
/// # Errors
/// [`PinError::Unsafe`] naming the first unsafe component, or [`PinError::Io`].
///
/// # Panics
/// When `dir` is not an absolute plain path under `base`.
pub fn private_dir(base: &Path, dir: &Path) -> Result<OwnedFd, PinError> {
    assert!(
        dir.starts_with(base) && dir != base,
        "{} is not under {}",
        dir.display(),
        base.display()
    );
    let made = base.components().count();
    walk(dir, Some(made)).map(|fd| fd.expect("walk makes missing folders"))
}

/// Opens absolute `path` one component at a time (see [`private_dir`]). With `make: Some(n)`,
/// the components after the first `n` are made when missing and set to mode 0700; with None,
/// a missing component ends the walk with `Ok(None)`.
fn walk(path: &Path, make: Option<usize>) -> Result<Option<OwnedFd>, PinError> {
    let mut at = PathBuf::new();
    let mut dir: Option<OwnedFd> = None;
    for (i, component) in path.components().enumerate() {
        let name = match component {
            Component::RootDir => OsStr::new("/"),
            Component::Normal(name) => name,
            _ => unreachable!("instance paths are absolute and plain: {}", path.display()),
        };
        at.push(name);
        let io_err = |source: Errno| PinError::Io { path: at.clone(), source: source.into() };
        let parent = dir.as_ref().map_or(CWD, rustix::fd::AsFd::as_fd);
        let ours = make.is_some_and(|n| i >= n);
        if ours {
            match rustix::fs::mkdirat(parent, name, Mode::RWXU) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(parent, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if make.is_none() => return Ok(None),
            Err(Errno::LOOP | Errno::NOTDIR) => {
                let st =
                    rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io_err)?;
                let problem = if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                    Unsafety::Symlink
                } else {
                    Unsafety::NotAFolder
                };
                return Err(PinError::Unsafe { path: at, problem });
            }
            Err(e) => return Err(io_err(e)),
        };
        let owner = rustix::fs::fstat(&fd).map_err(io_err)?.st_uid;
        if owner != 0 {
            return Err(PinError::Unsafe { path: at, problem: Unsafety::Owner(owner) });
        }
        if ours {
            rustix::fs::fchmod(&fd, Mode::RWXU).map_err(io_err)?;
        }
        dir = Some(fd);
    }
    Ok(dir)
}

/// Mounts bpffs on [`BPFFS`], root-only (mode 0700), if nothing of that type is there.
///
/// # Errors
/// [`PinError::Mount`] when it cannot be mounted.
pub fn ensure_bpffs() -> Result<(), PinError> {
    if rustix::fs::statfs(BPFFS).is_ok_and(|st| st.f_type == libc::BPF_FS_MAGIC) {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).map_err(PinError::Mount)?;
    // Without mode=0700 the kernel makes the mount 1777, where anyone may make folders.
    let data = c"mode=0700";
    // SAFETY: valid C strings; mounting bpffs has no other preconditions.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(PinError::Mount(io::Error::last_os_error()));
    }
    Ok(())
}

/// The names of all instances that have pins or state, sorted.
#[must_use]
pub fn instance_names() -> Vec<String> {
    let mut names: Vec<String> = [PIN_ROOT, STATE_ROOT]
        .iter()
        .filter_map(|root| fs::read_dir(root).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Removes both folders of an instance (its pins must be unpinned links and maps only).
///
/// # Errors
/// When a folder cannot be removed.
pub fn remove_dirs(paths: &InstancePaths) -> io::Result<()> {
    for dir in [&paths.pins, &paths.state] {
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    // The roots go with the last instance (this fails, harmlessly, while others exist).
    for root in [PIN_ROOT, STATE_ROOT] {
        let _ = fs::remove_dir(root);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, chown, symlink};

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn unsafety(result: Result<impl std::fmt::Debug, PinError>) -> (PathBuf, Unsafety) {
        match result {
            Err(PinError::Unsafe { path, problem }) => (path, problem),
            other => panic!("not refused as unsafe: {other:?}"),
        }
    }

    #[test]
    fn private_dirs_refuse_symlinks_files_and_other_users_folders() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none_or(|v| v != "true"), "CI=true: needs root");
            eprintln!("skipping: chown needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        let made = base.join("a/b");
        private_dir(base, &made).unwrap();
        fs::set_permissions(base.join("a"), fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(base, &made).unwrap();
        assert_eq!((mode(&base.join("a")), mode(&made)), (0o700, 0o700));

        // Another user's symlink to their folder: refused, and its target keeps its mode.
        let target = base.join("target");
        fs::create_dir(&target).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
        symlink(&target, base.join("link")).unwrap();
        let refused = unsafety(private_dir(base, &base.join("link/x")));
        assert_eq!(refused, (base.join("link"), Unsafety::Symlink));
        assert_eq!(mode(&target), 0o755, "no chmod through the symlink");
        assert!(!target.join("x").exists());

        let theirs = base.join("theirs");
        fs::create_dir(&theirs).unwrap();
        chown(&theirs, Some(65534), Some(65534)).unwrap();
        let refused = unsafety(private_dir(base, &theirs.join("x")));
        assert_eq!(refused, (theirs.clone(), Unsafety::Owner(65534)));
        assert_eq!(
            unsafety(walk(&theirs.join("x"), None)),
            (theirs.clone(), Unsafety::Owner(65534))
        );
        let msg = PinError::Unsafe { path: theirs.clone(), problem: Unsafety::Owner(65534) };
        assert!(
            msg.to_string().contains(&format!("{}: it is owned by uid 65534", theirs.display()))
        );

        fs::write(base.join("file"), "").unwrap();
        let refused = unsafety(private_dir(base, &base.join("file/x")));
        assert_eq!(refused, (base.join("file"), Unsafety::NotAFolder));

        assert!(walk(&base.join("missing/x"), None).unwrap().is_none(), "nothing there: fine");
    }

    #[test]
    fn names_are_plain_folder_names() {
        for ok in ["default", "web-1", "a.b_c", "X"] {
            assert!(InstancePaths::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "..", "with space", &"x".repeat(65)] {
            assert!(matches!(InstancePaths::new(bad), Err(PinError::Name { .. })), "{bad}");
        }
        let p = InstancePaths::new("web").unwrap();
        assert_eq!(p.map("stats"), Path::new("/sys/fs/bpf/cgroup-connect/web/stats"));
        assert_eq!(
            p.link("check_connect4"),
            Path::new("/sys/fs/bpf/cgroup-connect/web/link_check_connect4")
        );
        assert_eq!(p.state_file(), Path::new("/run/cgroup-connect/web/state.json"));
    }
}
