//! Events: reading blocked (and audit) attempts from an instance's ring buffer, and printing
//! them as text or JSON lines. Owns the conversion from the programs' `Event` records.
use std::{
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use cgroup_connect_common::{Event, hook, verdict};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::view::PolicyView;

/// An event as printed.
#[derive(Debug, Serialize)]
pub struct EventLine {
    pub time: String,
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
            verdict: if e.verdict == verdict::AUDIT { "audit" } else { "blocked" },
            hook: if e.hook == hook::SENDMSG { "sendmsg" } else { "connect" },
            protocol: match e.protocol {
                6 => "tcp",
                17 => "udp",
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

    /// Writes it as one line of text, or of JSON.
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
                self.comm,
                self.cgroup_id,
                self.rule_id,
                self.rule
            )
        }
    }
}

/// The wall-clock time of a `CLOCK_BOOTTIME` timestamp.
fn wall_time(boot_ns: u64) -> SystemTime {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) };
    let now_boot = Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    );
    let age = now_boot.saturating_sub(Duration::from_nanos(boot_ns));
    SystemTime::now() - age
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

    /// Waits for events, then returns every one waiting.
    ///
    /// # Errors
    /// When waiting fails.
    pub async fn next_batch(&mut self) -> io::Result<Vec<Event>> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<Event>() {
                // SAFETY: the programs write whole Events; read_unaligned copes with any alignment.
                batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
            }
        }
        guard.clear_ready();
        Ok(batch)
    }
}

/// Where `--events FILE` writes: FILE opened for appending, or standard output for `-`.
///
/// # Errors
/// When the file cannot be opened.
pub fn open_sink(path: &Path) -> io::Result<Box<dyn Write + Send>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(io::stdout()));
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    Ok(Box::new(io::LineWriter::new(file)))
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
