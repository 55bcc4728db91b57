//! Temporary folders for policy files, lists and sockets.
use std::path::{Path, PathBuf};

/// A uniquely named temporary directory (tempfile's), removed on drop.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// Makes `cgroup-connect-TAG-…` under the system temp dir.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("cgroup-connect-{tag}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("make a temp dir for {tag}: {e}"));
        Self(dir)
    }

    /// Its path.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Writes `name` in it and returns its path.
    #[must_use]
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}
