//! A systemd notify socket for a blocker under test (`NOTIFY_SOCKET`), in the test's own folder.
use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    time::Duration,
};

/// The socket the blocker's `sd_notify` messages come to.
pub struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    /// Binds `notify.sock` in `dir` (the test's 0700 folder), with a 30 s read timeout.
    pub fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self { path, socket }
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next message, or a text saying none came within 30 s. A read that a signal
    /// interrupts (EINTR) is tried again, at most 100 times.
    pub fn next(&self) -> String {
        let mut buf = [0u8; 512];
        let mut got = self.socket.recv(&mut buf);
        for _ in 0..100 {
            match got {
                Err(ref e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    got = self.socket.recv(&mut buf);
                }
                _ => break,
            }
        }
        got.map_or_else(
            |e| format!("no message within 30 s: {e}"),
            |n| String::from_utf8_lossy(&buf[..n]).into_owned(),
        )
    }
}
