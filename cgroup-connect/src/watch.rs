//! Watching the filesystem with inotify: a cgroup's directory removed and made anew (a
//! service restart), and, for `run --watch`, rule files changed on disk however they were
//! changed: written in place, replaced by a rename (editors), or swapped the way a Kubernetes
//! `ConfigMap` volume is (a new `..data` symlink renamed over the old one, so no event names the
//! file itself). Both watch the parent folder, which sees every one of these.
use std::{
    collections::BTreeSet,
    ffi::OsString,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use inotify::{EventMask, Inotify, WatchMask};
use tokio::io::unix::AsyncFd;

/// How long a burst of events may last: a `ConfigMap` swap or an editor's save is several.
const SETTLE: Duration = Duration::from_millis(100);

/// An inotify instance on the tokio reactor.
struct Watcher {
    inotify: AsyncFd<Inotify>,
}

impl Watcher {
    /// Watches each folder in `dirs` for `mask`.
    fn new<'a>(dirs: impl IntoIterator<Item = &'a Path>, mask: WatchMask) -> io::Result<Self> {
        // SAFETY: the Inotify owns its descriptor, which stays open and the same until the
        // AsyncFd (its only owner) is dropped.
        let inotify =
            unsafe { AsyncFd::register(Inotify::init()?) }.map_err(|e| e.into_parts().1)?;
        let this = Self { inotify };
        for dir in dirs {
            this.add(dir, mask)?;
        }
        Ok(this)
    }

    /// Watches folder `dir` for `mask` too (again: the masks merge).
    fn add(&self, dir: &Path, mask: WatchMask) -> io::Result<()> {
        self.inotify.get_ref().watches().add(dir, mask | WatchMask::ONLYDIR).map(drop)
    }

    /// The next batch of events: each one's mask and the name in the folder it is about.
    async fn next(&mut self) -> io::Result<Vec<(EventMask, Option<OsString>)>> {
        let mut buffer = [0u8; 4096];
        loop {
            let mut ready = self.inotify.readable_mut().await?;
            match ready.get_inner_mut().read_events(&mut buffer) {
                Ok(events) => {
                    return Ok(events.map(|e| (e.mask, e.name.map(ToOwned::to_owned))).collect());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads events until none came for [`SETTLE`].
    async fn settle(&mut self) -> io::Result<()> {
        while let Ok(events) = tokio::time::timeout(SETTLE, self.next()).await {
            events?;
        }
        Ok(())
    }
}

/// Tells when a cgroup's directory may have been removed or made anew: its parent sees every
/// `mkdir` and `rmdir` of its children.
pub struct CgroupWatch {
    watcher: Watcher,
    name: OsString,
    /// False once the parent went away (the kernel drops the watch then).
    alive: bool,
}

impl CgroupWatch {
    /// Watches the parent of `path`.
    ///
    /// # Errors
    /// When `path` has no parent (the root of the tree, never removed) or inotify fails.
    pub fn new(path: &Path) -> io::Result<Self> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the root cgroup has no parent",
            ));
        };
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::DELETE_SELF;
        Ok(Self { watcher: Watcher::new([parent], mask)?, name: name.to_owned(), alive: true })
    }

    /// Whether the watch still works (its parent was not removed).
    #[must_use]
    pub fn alive(&self) -> bool {
        self.alive
    }

    /// Waits until an event names the cgroup's directory, or the parent goes away; never
    /// returns once the watch is dead.
    ///
    /// # Errors
    /// When reading the events fails.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            if !self.alive {
                return std::future::pending().await;
            }
            let mut hit = false;
            for (mask, name) in self.watcher.next().await? {
                if mask.intersects(EventMask::IGNORED | EventMask::DELETE_SELF) {
                    self.alive = false;
                    hit = true;
                }
                hit |= name.as_deref() == Some(self.name.as_os_str());
            }
            if hit {
                return Ok(());
            }
        }
    }
}

/// What may change a file in a folder: a write, a rename onto it or away, a new or removed
/// entry (a `ConfigMap`'s `..data` link), a change of mode.
const FILE_EVENTS: WatchMask = WatchMask::CREATE
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::ATTRIB);

/// Tells when the contents of a set of files changed (`run --watch`).
pub struct FileWatch {
    watcher: Watcher,
    files: Vec<PathBuf>,
    seen: u64,
}

impl FileWatch {
    /// Watches `files` (as given: a `ConfigMap`'s file is a symbolic link that stays while its
    /// target is swapped) through their folders, from their contents now.
    ///
    /// # Errors
    /// When a folder cannot be watched.
    pub fn new(files: Vec<PathBuf>) -> io::Result<Self> {
        let dirs: BTreeSet<&Path> = files.iter().filter_map(|f| f.parent()).collect();
        let watcher = Watcher::new(dirs, FILE_EVENTS)?;
        let seen = fingerprint(&files);
        Ok(Self { watcher, files, seen })
    }

    /// Watches `more` files too (those of them not watched yet), from their contents now.
    ///
    /// # Errors
    /// When a new folder cannot be watched; the files watched before stay watched.
    pub fn add(&mut self, more: impl IntoIterator<Item = PathBuf>) -> io::Result<()> {
        for file in more {
            if self.files.contains(&file) {
                continue;
            }
            if let Some(dir) = file.parent() {
                self.watcher.add(dir, FILE_EVENTS)?;
            }
            self.files.push(file);
        }
        self.seen = fingerprint(&self.files);
        Ok(())
    }

    /// Waits until the files' contents differ from when last seen (events settle first, so
    /// a swap in several steps counts once; a change back and forth is no change).
    ///
    /// # Errors
    /// When reading the events fails.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            self.watcher.next().await?;
            self.watcher.settle().await?;
            let now = fingerprint(&self.files);
            if now != self.seen {
                self.seen = now;
                return Ok(());
            }
        }
    }
}

/// A hash of the files' contents; an unreadable file counts by its error.
fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for file in files {
        match std::fs::read(file) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(e) => e.kind().hash(&mut hasher),
        }
    }
    hasher.finish()
}
