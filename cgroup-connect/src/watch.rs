//! Watching the filesystem with inotify: a cgroup's directory made (`blocker run` waiting for
//! it), removed and made anew (a service restart), and, for `run --watch`, rule files changed on disk however they were
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

/// Tells when a cgroup's directory may have been made or removed: the nearest directory on its
/// path that exists sees every `mkdir` and `rmdir` of the next part of the path. When that part
/// is made, the watch moves down to it, one part at a time, until it watches the cgroup's
/// parent; when a watched directory is removed, it moves up. Symbolic links are never followed.
pub struct CgroupWatch {
    path: PathBuf,
    /// The watcher of `watched`, None until armed (and after its directory went away).
    watcher: Option<Watcher>,
    watched: PathBuf,
    /// The name, in `watched`, of the next part of `path`.
    next: OsString,
}

impl CgroupWatch {
    /// Watches the nearest existing directory on the way to `path`.
    ///
    /// # Errors
    /// When `path` has no parent (the root of the tree, never removed) or inotify fails.
    pub fn new(path: &Path) -> io::Result<Self> {
        if path.parent().is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the root cgroup has no parent",
            ));
        }
        let mut this = Self {
            path: path.to_owned(),
            watcher: None,
            watched: PathBuf::new(),
            next: OsString::new(),
        };
        this.arm()?;
        Ok(this)
    }

    /// Watches the deepest directory above `path` that exists now (its parent, once the
    /// parent exists). A part made between the look and the watch is seen by the look after
    /// it, so no part is missed; bounded by the number of parts. True when it watches another
    /// directory than before (events until then went to the old watch: the caller looks).
    fn arm(&mut self) -> io::Result<bool> {
        for _ in 0..=self.path.components().count() {
            let Some(dir) =
                self.path.ancestors().skip(1).find(|dir| std::fs::symlink_metadata(dir).is_ok())
            else {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no part of the path exists"));
            };
            let next = self
                .path
                .strip_prefix(dir)
                .ok()
                .and_then(|rest| rest.iter().next())
                .unwrap_or_default()
                .to_owned();
            if self.watcher.is_some() && dir == self.watched {
                return Ok(false);
            }
            let mask = WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::MOVED_FROM
                | WatchMask::MOVED_TO
                | WatchMask::DELETE_SELF
                | WatchMask::DONT_FOLLOW;
            let watcher = Watcher::new([dir], mask)?;
            let below = dir.join(&next);
            (self.watcher, self.watched, self.next) = (Some(watcher), dir.to_owned(), next);
            if below == self.path || std::fs::symlink_metadata(&below).is_err() {
                return Ok(true);
            }
        }
        Ok(true)
    }

    /// Waits until an event names the next part of the path (the cgroup's directory itself,
    /// once its parent exists), or the watched directory goes away; returns at once when the
    /// watch moved to another directory (down a part made, up from a part removed), so the
    /// caller looks at the path again.
    ///
    /// # Errors
    /// When reading the events fails, or no directory on the path can be watched.
    pub async fn changed(&mut self) -> io::Result<()> {
        if self.arm()? {
            return Ok(());
        }
        loop {
            let Some(watcher) = self.watcher.as_mut() else {
                return std::future::pending().await;
            };
            let mut hit = false;
            for (mask, name) in watcher.next().await? {
                if mask.intersects(EventMask::IGNORED | EventMask::DELETE_SELF) {
                    // The kernel dropped the watch: the next call watches a directory above.
                    self.watcher = None;
                    hit = true;
                }
                hit |= name.as_deref() == Some(self.next.as_os_str());
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
