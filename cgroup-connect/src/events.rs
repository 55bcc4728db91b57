//! Events: reading blocked (and audit) attempts from an instance's ring buffer, and printing
//! them as text or JSON lines. Owns the conversion from the programs' `Event` records, the
//! events file, and the claim of an instance's one events reader. A JSON line is described by
//! docs/schemas/event.schema.json.
use std::{
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use cgroup_connect_common::{Event, hook, verdict};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::{
    quote::{Escaped, ShortPath},
    view::PolicyView,
};

/// An event as printed.
#[derive(Debug, Serialize)]
pub struct EventLine {
    pub time: String,
    /// `blocked`, or `audit_would_block` in audit mode: the words of `stats` and the metrics.
    pub verdict: &'static str,
    pub hook: &'static str,
    pub protocol: &'static str,
    pub family: u8,
    pub dst: String,
    pub port: u16,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub rule_id: u32,
    pub rule: String,
}

impl EventLine {
    /// The printable form of `e`; rule texts come from `view`.
    #[must_use]
    pub fn new(e: &Event, view: &mut PolicyView) -> Self {
        let n = (u128::from(e.addr_hi) << 64) | u128::from(e.addr_lo);
        let dst = if e.family == 4 {
            IpAddr::V4(Ipv4Addr::from(u32::try_from(n & 0xffff_ffff).unwrap_or(0)))
        } else {
            IpAddr::V6(Ipv6Addr::from(n))
        };
        let rule = view.rule_text(e.rule);
        let comm_len = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
        Self {
            time: humantime::format_rfc3339_millis(wall_time(e.time_ns)).to_string(),
            verdict: if e.verdict == verdict::AUDIT { "audit_would_block" } else { "blocked" },
            hook: match e.hook {
                hook::SENDMSG => "sendmsg",
                hook::PACKET => "packet",
                _ => "connect",
            },
            protocol: match e.protocol {
                6 => "tcp",
                17 => "udp",
                1 => "icmp",
                58 => "icmpv6",
                132 => "sctp",
                136 => "udplite",
                _ => "other",
            },
            family: e.family,
            dst: dst.to_string(),
            port: e.port,
            pid: e.pid,
            tgid: e.tgid,
            uid: e.uid,
            comm: String::from_utf8_lossy(&e.comm[..comm_len]).into_owned(),
            cgroup_id: e.cgroup_id,
            rule_id: e.rule,
            rule,
        }
    }

    /// Writes it as one line of text, or of JSON. The process name is escaped in both (a
    /// process names itself, and must not forge lines or drive a terminal).
    ///
    /// # Errors
    /// When the writer fails.
    pub fn write(&self, out: &mut impl Write, json: bool) -> io::Result<()> {
        if json {
            serde_json::to_writer(&mut *out, self).map_err(io::Error::other)?;
            writeln!(out)
        } else {
            let dst = if self.family == 6 { format!("[{}]", self.dst) } else { self.dst.clone() };
            writeln!(
                out,
                "{} {} {} {}:{} pid={} tgid={} uid={} comm={} cgroup={} rule={} ({})",
                self.time,
                self.verdict,
                self.protocol,
                dst,
                self.port,
                self.pid,
                self.tgid,
                self.uid,
                Escaped(&self.comm),
                self.cgroup_id,
                self.rule_id,
                self.rule
            )
        }
    }
}

/// The wall-clock time of a `CLOCK_BOOTTIME` timestamp. The offset between the two clocks is
/// read at each call, but kept from the call before while it moves by less than
/// [`CLOCK_JITTER`] (two clock reads apart, a reader preempted between them): so the times of
/// events in ring order never go backwards, while a step of the wall clock (settimeofday, NTP)
/// is followed.
pub(crate) fn wall_time(boot_ns: u64) -> SystemTime {
    static KEPT: Mutex<Option<Duration>> = Mutex::new(None);
    let now = clock_offset();
    let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
    let offset = match *kept {
        Some(k) if k.abs_diff(now) < CLOCK_JITTER => k,
        _ => *kept.insert(now),
    };
    SystemTime::UNIX_EPOCH + offset + Duration::from_nanos(boot_ns)
}

/// How far the wall clock may seem to move against `CLOCK_BOOTTIME` before [`wall_time`]
/// takes it as a step of the clock rather than the jitter of reading two clocks.
const CLOCK_JITTER: Duration = Duration::from_millis(20);

/// `CLOCK_BOOTTIME` now: the clock the programs read (`bpf_ktime_get_boot_ns`).
pub(crate) fn boot_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) };
    Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0))
}

/// The wall-clock time at which `CLOCK_BOOTTIME` was zero.
fn clock_offset() -> Duration {
    let boot = boot_time();
    let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    wall.saturating_sub(boot)
}

/// How often a reader looks for events the programs did not wake it for.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Every event waiting in `ring`.
fn drain(ring: &mut RingBuf<MapData>) -> Vec<Event> {
    let mut batch = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<Event>() {
            // SAFETY: the programs write whole Events; read_unaligned copes with any alignment.
            batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
        }
    }
    batch
}

/// Reads an instance's events ring buffer as it fills.
pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventReader {
    /// A reader of `ring`.
    ///
    /// # Errors
    /// When the ring cannot be registered with the runtime.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its descriptor and is moved into the AsyncFd, which
        // deregisters it before the descriptor closes.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(io::Error::from)?;
        Ok(Self { ring })
    }

    /// Waits for events, then returns every one waiting, in the order written. The programs
    /// wake the reader only when the ring fills past an eighth, so this also looks every
    /// [`POLL_INTERVAL`]: an event waits at most that long.
    ///
    /// # Errors
    /// When waiting fails.
    pub async fn next_batch(&mut self) -> io::Result<Vec<Event>> {
        loop {
            let batch = match tokio::time::timeout(POLL_INTERVAL, self.ring.readable_mut()).await {
                Ok(guard) => {
                    let mut guard = guard?;
                    let batch = drain(guard.get_inner_mut());
                    guard.clear_ready();
                    batch
                }
                Err(_elapsed) => drain(self.ring.get_mut()),
            };
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }
}

/// Why the events of an instance cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// Events go to one reader: a second would split the stream with the first.
    #[error(
        "the events of instance {name} are read already, by {holder}: each event goes to one reader, so run one reader at a time (stop that one, or read what it writes)"
    )]
    Busy { name: String, holder: String },
    #[error("cannot claim the events of instance {name}")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// The claim of the one reader of an instance's events (`blocker events`, or `blocker run
/// --events`): a lock on its `events-reader` file, which names the reader, held until dropped
/// (or the process ends).
pub struct ReaderClaim {
    _file: std::fs::File,
}

impl ReaderClaim {
    /// Claims the events of instance `paths` (its state folder must exist) for this process,
    /// `what` being how the reader was started (`blocker events`).
    ///
    /// # Errors
    /// [`ReaderError::Busy`] naming the reader that holds them.
    pub fn take(paths: &crate::pins::InstancePaths, what: &str) -> Result<Self, ReaderError> {
        let io_err = |source| ReaderError::Io { name: paths.name.clone(), source };
        let mut file = crate::state::open_private(&paths.reader_file()).map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(paths.reader_file()).unwrap_or_default();
                let holder = match holder.trim().split_once(' ') {
                    Some((pid, what)) => format!("process {pid} ({what})"),
                    None => "another process".to_owned(),
                };
                return Err(ReaderError::Busy { name: paths.name.clone(), holder });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0).map_err(io_err)?;
        writeln!(file, "{} {what}", std::process::id()).map_err(io_err)?;
        Ok(Self { _file: file })
    }
}

/// Why `--events FILE` cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The blocker runs as root: following a link would let whoever made it (in /tmp, say)
    /// have root append to a file of their choosing.
    #[error(
        "the events file {} is a symbolic link, which the blocker does not follow: name the file itself",
        ShortPath(path)
    )]
    Symlink { path: PathBuf },
    #[error("cannot open the events file {}", ShortPath(path))]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where `--events FILE` writes: FILE opened for appending (made with mode 0600 if it does
/// not exist; a symbolic link is refused), or standard output for `-`.
///
/// # Errors
/// A [`SinkError`] naming the path.
pub fn open_sink(path: &Path) -> Result<Box<dyn Write + Send>, SinkError> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(io::stdout()));
    }
    let file =
        open_private(path, std::fs::OpenOptions::new().append(true)).map_err(|e| match e {
            Some(source) => SinkError::Open { path: path.to_owned(), source },
            None => SinkError::Symlink { path: path.to_owned() },
        })?;
    Ok(Box::new(io::LineWriter::new(file)))
}

/// Opens `path` for writing as `options` say, made with mode 0600 if it does not exist, never
/// through a symbolic link: `Err(None)` when `path` is one.
pub(crate) fn open_private(
    path: &Path,
    options: &mut std::fs::OpenOptions,
) -> Result<std::fs::File, Option<io::Error>> {
    options.create(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path).map_err(|e| {
        // O_NOFOLLOW answers ELOOP, or fs.protected_symlinks EACCES first: say why.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            None
        } else {
            Some(e)
        }
    })
}

/// Writes `batch` to `out`, one line (text or JSON) an event, then flushes.
///
/// # Errors
/// When the writer fails.
pub fn write_batch(
    batch: &[Event],
    view: &mut PolicyView,
    out: &mut impl Write,
    json: bool,
) -> io::Result<()> {
    for e in batch {
        EventLine::new(e, view).write(out, json)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events in ring order carry times that never go backwards, although each conversion
    /// reads the two clocks again.
    #[test]
    fn wall_times_follow_the_boot_clock() {
        let mut last = SystemTime::UNIX_EPOCH;
        for ns in (0..20_000u64).map(|i| 1_000_000_000 + i * 1_000) {
            let t = wall_time(ns);
            assert!(t >= last, "{t:?} before {last:?}");
            last = t;
        }
    }

    fn line(comm: &str) -> EventLine {
        EventLine {
            time: "2025-01-01T00:00:00.000Z".into(),
            verdict: "blocked",
            hook: "connect",
            protocol: "tcp",
            family: 4,
            dst: "192.0.2.1".into(),
            port: 443,
            pid: 7,
            tgid: 7,
            uid: 0,
            comm: comm.into(),
            cgroup_id: 1,
            rule_id: 1,
            rule: "block 192.0.2.1".into(),
        }
    }

    fn written(e: &EventLine, json: bool) -> String {
        let mut out = Vec::new();
        e.write(&mut out, json).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_process_name_cannot_forge_lines() {
        let forged = "x\n\x1b[31mFAKE";
        for json in [false, true] {
            let text = written(&line(forged), json);
            assert_eq!(text.lines().count(), 1, "{text:?}");
            assert!(!text.trim_end_matches('\n').chars().any(char::is_control), "{text:?}");
        }
        assert!(written(&line(forged), false).contains(" comm=x\\n\\x1b[31mFAKE "));
        assert!(written(&line("curl"), false).contains(" comm=curl "));
    }
}
