//! Where instances live: every bpffs and /run path is built here.
//!
//! - `/sys/fs/bpf/cgroup-connect/NAME/` holds the instance's pinned maps (always, while it
//!   runs) and, with `--pin`, its pinned links (then it outlives the process).
//! - `/run/cgroup-connect/NAME/` holds its state (`state.json`: cgroup, policy sources, live
//!   edits, mode, process) and a lock file that serializes changes.
//!
//! Both folders are root-only (0700). bpffs cannot hold plain files, hence the two places;
//! both are cleared at reboot, as the kernel objects are.
use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
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
/// `statfs.f_type` of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A bad instance name, or a failure to prepare the folders.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "invalid instance name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    Name { name: String },
    #[error("no instance named {name:?}: `blocker status` lists them")]
    NoInstance { name: String },
    #[error("cannot mount bpffs on {BPFFS}: mount it with `mount -t bpf bpf {BPFFS}`")]
    Mount(#[source] io::Error),
    #[error("cannot prepare {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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

    /// The state file.
    #[must_use]
    pub fn state_file(&self) -> PathBuf {
        self.state.join(STATE_FILE)
    }

    /// The lock file.
    #[must_use]
    pub fn lock_file(&self) -> PathBuf {
        self.state.join(LOCK_FILE)
    }

    /// Whether the instance has pinned links (it enforces without a process).
    #[must_use]
    pub fn has_pinned_links(&self) -> bool {
        cgroup_connect_common::programs::ALL.iter().any(|p| self.link(p).exists())
    }

    /// Whether anything of the instance exists.
    #[must_use]
    pub fn exists(&self) -> bool {
        self.pins.exists() || self.state_file().exists()
    }

    /// Makes both folders (root-only), mounting bpffs first if needed.
    ///
    /// # Errors
    /// A [`PinError`] naming the folder that could not be made.
    pub fn create_dirs(&self) -> Result<(), PinError> {
        ensure_bpffs()?;
        for dir in [Path::new(PIN_ROOT), &self.pins, Path::new(STATE_ROOT), &self.state] {
            make_private_dir(dir)?;
        }
        Ok(())
    }
}

fn make_private_dir(dir: &Path) -> Result<(), PinError> {
    let io_err = |source| PinError::Io { path: dir.to_owned(), source };
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err)
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Mounts bpffs on [`BPFFS`] if nothing of that type is there.
///
/// # Errors
/// [`PinError::Mount`] when it cannot be mounted.
pub fn ensure_bpffs() -> Result<(), PinError> {
    // SAFETY: statfs fills plain data or fails.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let path = c"/sys/fs/bpf";
    // SAFETY: a valid C string and out pointer.
    if unsafe { libc::statfs(path.as_ptr(), &raw mut st) } == 0 && st.f_type == BPF_FS_MAGIC {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).map_err(PinError::Mount)?;
    // SAFETY: valid C strings; mounting bpffs has no other preconditions.
    let rc = unsafe {
        libc::mount(c"bpf".as_ptr(), path.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null())
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
    use super::*;

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
