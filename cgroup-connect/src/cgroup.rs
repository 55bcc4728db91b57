//! Finding and validating cgroup v2 directories. Owns everything the blocker knows about the
//! cgroup filesystem: where the v2 hierarchy is mounted, whether a directory is on it, and
//! temporary child cgroups (used by `blocker doctor` and the tests).
use std::{
    fs::File,
    io,
    os::fd::{AsFd, BorrowedFd},
    path::{Component, Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::quote::ShortPath;

/// Why a cgroup directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// /proc/self/mountinfo lists no cgroup2 mount.
    #[error(
        "no cgroup v2 mount found in /proc/self/mountinfo: mount one with \
         `mount -t cgroup2 none /sys/fs/cgroup/unified`, or pass --cgroup DIR"
    )]
    NoCgroup2Mount,
    /// The directory does not exist.
    #[error(
        "cgroup directory {} does not exist: create it (mkdir), pass an existing cgroup v2 \
         directory, or add --wait-for-cgroup to attach as soon as it is made",
        ShortPath(path)
    )]
    NotFound { path: PathBuf },
    /// A cgroup that does not exist yet and cannot be waited for.
    #[error("cannot wait for cgroup {}: {why}", ShortPath(path))]
    CannotWait { path: PathBuf, why: &'static str },
    /// The directory does not exist and would not be on the cgroup v2 tree: on a hybrid host
    /// that tree is mounted below /sys/fs/cgroup, at /sys/fs/cgroup/unified.
    #[error(
        "cgroup directory {} does not exist, and is not on the cgroup v2 tree, which is mounted at {}: {}",
        ShortPath(path),
        ShortPath(root),
        OffTreeFix(root, suggestion.as_deref())
    )]
    OffTree { path: PathBuf, root: PathBuf, suggestion: Option<PathBuf> },
    /// The path is not a directory.
    #[error(
        "{} is not a directory: pass a cgroup v2 directory, such as {}",
        ShortPath(path),
        ShortPath(hint)
    )]
    NotADirectory { path: PathBuf, hint: PathBuf },
    /// The directory is on cgroup v1 or on another filesystem.
    #[error(
        "{} is not on a cgroup v2 mount (it is on {fs}): pass a directory under {}",
        ShortPath(path),
        ShortPath(hint)
    )]
    NotCgroup2 { path: PathBuf, fs: &'static str, hint: PathBuf },
    /// Any other I/O failure on `path`.
    #[error("cannot use cgroup directory {}", ShortPath(path))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The fix an [`CgroupError::OffTree`] message ends with.
struct OffTreeFix<'a>(&'a Path, Option<&'a Path>);

impl std::fmt::Display for OffTreeFix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            Some(path) => write!(f, "use {}", ShortPath(path)),
            None => write!(f, "pass a directory under {}", ShortPath(self.0)),
        }
    }
}

/// The error for `path`, which does not exist: [`CgroupError::OffTree`] when the cgroup v2
/// tree is known and `path` is not under it, suggesting the same place under the tree when
/// `path` is beside it (`/sys/fs/cgroup/x` for `/sys/fs/cgroup/unified/x`).
fn not_found(path: PathBuf) -> CgroupError {
    let Ok(root) = cgroup2_root() else { return CgroupError::NotFound { path } };
    let Ok(absolute) = std::path::absolute(&path) else { return CgroupError::NotFound { path } };
    if absolute.starts_with(&root) {
        return CgroupError::NotFound { path };
    }
    let suggestion = root
        .parent()
        .filter(|p| *p != Path::new("/"))
        .and_then(|parent| absolute.strip_prefix(parent).ok())
        .map(|rest| root.join(rest));
    CgroupError::OffTree { path, root, suggestion }
}

/// The mount point of the cgroup v2 hierarchy, read from /proc/self/mountinfo:
/// /sys/fs/cgroup on most distributions, /sys/fs/cgroup/unified on hybrid systems.
///
/// # Errors
/// [`CgroupError::NoCgroup2Mount`] when there is none.
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| CgroupError::Io { path: "/proc/self/mountinfo".into(), source })?;
    cgroup2_mount_in(&text).ok_or(CgroupError::NoCgroup2Mount)
}

/// The first cgroup2 mount point in the text of a mountinfo file.
#[must_use]
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        left.split(' ').nth(4).map(|p| PathBuf::from(unescape_mountinfo(p)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks a cgroup directory that does not exist yet, for `blocker run` to wait for: returns
/// its absolute path, which is on the cgroup v2 tree and not its root, has no `.` or `..`, and
/// whose part that exists now has no symbolic link (so the path names one place, for good).
///
/// # Errors
/// [`CgroupError::OffTree`] off the cgroup v2 tree, [`CgroupError::CannotWait`] for the root
/// or a path through `..` or a symbolic link, [`CgroupError::NotADirectory`] when a part of it
/// is a file.
pub fn awaited(path: &Path) -> Result<PathBuf, CgroupError> {
    let cannot = |why| CgroupError::CannotWait { path: path.to_owned(), why };
    let absolute = std::path::absolute(path)
        .map_err(|source| CgroupError::Io { path: path.to_owned(), source })?;
    if absolute.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(cannot("it goes through `..` or `.`: give the path without them"));
    }
    let root = cgroup2_root()?;
    if !absolute.starts_with(&root) {
        return Err(not_found(path.to_owned()));
    }
    if absolute == root {
        return Err(cannot("it is the root of the cgroup v2 tree, which judges the whole machine"));
    }
    let Some((existing, meta)) =
        absolute.ancestors().find_map(|a| std::fs::symlink_metadata(a).ok().map(|m| (a, m)))
    else {
        return Err(cannot("no part of it can be read"));
    };
    if !meta.is_dir() {
        let hint = root.clone();
        return Err(CgroupError::NotADirectory { path: existing.to_owned(), hint });
    }
    let real = std::fs::canonicalize(existing)
        .map_err(|source| CgroupError::Io { path: existing.to_owned(), source })?;
    if real != existing {
        return Err(cannot("a part of it is a symbolic link: give the real path"));
    }
    Ok(absolute)
}

/// An open directory that is known to be on the cgroup v2 hierarchy.
#[derive(Debug)]
pub struct CgroupDir {
    path: PathBuf,
    dir: File,
}

impl CgroupDir {
    /// Opens `path` and checks that it is a directory on a cgroup v2 mount; keeps its
    /// canonical path.
    ///
    /// # Errors
    /// A [`CgroupError`] that names `path` and says how to fix it.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, CgroupError> {
        let path = path.into();
        let hint = || cgroup2_root().unwrap_or_else(|_| PathBuf::from("/sys/fs/cgroup"));
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found(path)),
            Err(source) => return Err(CgroupError::Io { path, source }),
        };
        if !meta.is_dir() {
            return Err(CgroupError::NotADirectory { path, hint: hint() });
        }
        // Resolved and absolute: a state file names the same directory from any folder.
        let path =
            std::fs::canonicalize(&path).map_err(|source| CgroupError::Io { path, source })?;
        let dir =
            File::open(&path).map_err(|source| CgroupError::Io { path: path.clone(), source })?;
        match fs_magic(dir.as_fd()) {
            Ok(libc::CGROUP2_SUPER_MAGIC) => Ok(Self { path, dir }),
            Ok(libc::CGROUP_SUPER_MAGIC) => {
                Err(CgroupError::NotCgroup2 { path, fs: "cgroup v1", hint: hint() })
            }
            Ok(_) => Err(CgroupError::NotCgroup2 {
                path,
                fs: "a filesystem that is not cgroup",
                hint: hint(),
            }),
            Err(source) => Err(CgroupError::Io { path, source }),
        }
    }

    /// Opens the directory awaited at `path` (checked by [`awaited`]) now that it is there:
    /// refused when `path` or a part of it is a symbolic link.
    ///
    /// # Errors
    /// As [`CgroupDir::open`], and [`CgroupError::CannotWait`] for a symbolic link.
    pub fn open_awaited(path: &Path) -> Result<Self, CgroupError> {
        let link = || CgroupError::CannotWait {
            path: path.to_owned(),
            why: "it was made as a symbolic link, which is never followed",
        };
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(link());
        }
        let dir = Self::open(path)?;
        if dir.path() != path {
            return Err(link());
        }
        Ok(dir)
    }

    /// Its canonical path: absolute, with no `.`, `..` or symbolic link.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel's id of this cgroup (the directory's inode number), as in BPF's
    /// `bpf_get_current_cgroup_id()`.
    ///
    /// # Errors
    /// When the directory can no longer be read.
    pub fn id(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(self.dir.metadata()?.ino())
    }
}

impl AsFd for CgroupDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

/// The `statfs.f_type` of the filesystem `fd` is on: compared with libc's `*_MAGIC` constants.
fn fs_magic(fd: BorrowedFd<'_>) -> io::Result<libc::c_long> {
    Ok(rustix::fs::fstatfs(fd)?.f_type)
}

/// A child cgroup made for a short time (a doctor check, a test), removed on drop.
///
/// Drop moves any processes still inside to the parent before removing the directory, so a
/// failed test never leaves a cgroup behind.
#[derive(Debug)]
pub struct TempCgroup {
    dir: CgroupDir,
    parent: PathBuf,
}

impl TempCgroup {
    /// Makes `<parent>/<prefix>-<pid>-<n>`, a name unique among this process's temp cgroups.
    ///
    /// # Errors
    /// When the directory cannot be made or is not on cgroup v2.
    pub fn create(parent: &Path, prefix: &str) -> Result<Self, CgroupError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir(&path)
            .map_err(|source| CgroupError::Io { path: path.clone(), source })?;
        let dir = CgroupDir::open(&path).inspect_err(|_| {
            let _ = std::fs::remove_dir(&path);
        })?;
        Ok(Self { dir, parent: parent.to_owned() })
    }

    /// The cgroup.
    #[must_use]
    pub fn dir(&self) -> &CgroupDir {
        &self.dir
    }

    /// Its path.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes a child of this cgroup, also removed on drop (before this one, by drop order).
    ///
    /// # Errors
    /// As [`TempCgroup::create`].
    pub fn child(&self, prefix: &str) -> Result<Self, CgroupError> {
        Self::create(self.path(), prefix)
    }
}

impl Drop for TempCgroup {
    fn drop(&mut self) {
        // Bounded: a cgroup with processes still exiting may take a few tries to empty.
        for _ in 0..50 {
            if let Ok(procs) = std::fs::read_to_string(self.path().join("cgroup.procs")) {
                for pid in procs.split_whitespace() {
                    let _ = std::fs::write(self.parent.join("cgroup.procs"), pid);
                }
            }
            if std::fs::remove_dir(self.path()).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tracing::warn!("could not remove cgroup {}", self.path().display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_hybrid_mount() {
        assert_eq!(cgroup2_mount_in(HYBRID), Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn finds_unified_mount_with_optional_fields() {
        let text =
            "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount_in(text), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn none_without_cgroup2() {
        assert_eq!(cgroup2_mount_in("32 31 0:29 / /a rw - cgroup cgroup rw,cpu\n"), None);
    }

    #[test]
    fn unescapes_spaces() {
        let text = "1 2 0:1 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount_in(text), Some(PathBuf::from("/mnt/my cg")));
    }
}
