//! An instance's state: what it was started with (cgroup, policy sources, mode) and what was
//! changed live (rules added and removed). The state file is the one truth every command
//! works from: `run`, `add`, `remove`, `reload` and hostname refreshes each take the
//! instance's lock, read it, compute the policy, swap the tables and write it back.
//!
//! Live edits survive reloads: a reload re-reads the sources, then applies the rules added
//! and removed since (an added rule that a source now holds is not doubled).
use std::{
    fs::{self, File},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use cgroup_connect_common::{packet::socket_kind, programs};
use serde::{Deserialize, Serialize};

use crate::{
    pins::InstancePaths,
    policy::{Origin, Policy, PolicyError, SourcedRule, Sources},
    rules::{Action, Destination, Nat64Prefix, Rule},
    target::Target,
};

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state of instance {name} ({})", path.display())]
    Read {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the state of instance {name} ({}) is damaged: remove the instance with `blocker detach {name}`", path.display())]
    Parse {
        name: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write the state of instance {name}")]
    Write {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock instance {name}")]
    Lock {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// How many rules an instance holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Rules, as written (a hostname is one rule).
    pub rules: usize,
    /// Prefixes in the IPv4 and IPv6 tables (a hostname counts once per address).
    pub ipv4: usize,
    pub ipv6: usize,
}

/// A live edit: an action and a destination, which the state file holds as its rule text
/// (`{"action":"block","rule":"10.0.0.1"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRule {
    pub action: Action,
    pub rule: Destination,
}

impl LiveRule {
    /// The live form of `rule`.
    #[must_use]
    pub fn of(rule: &Rule) -> Self {
        Self { action: rule.action, rule: rule.dest.clone() }
    }

    /// Whether it is `rule`.
    fn is(&self, rule: &Rule) -> bool {
        self.action == rule.action && self.rule == rule.dest
    }
}

/// The `cgroup_id` of an instance whose cgroup is not made yet (`blocker run` waits for it):
/// no cgroup has inode 0, so `status` sees that the links are on no directory there.
pub const NOT_ATTACHED: u64 = 0;

/// Everything known about an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    pub cgroup: PathBuf,
    /// The workload as named on the command line (`--unit`, `--container`, `--pid`, `--pod`),
    /// which `cgroup` was resolved from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// The id of the cgroup the links are attached to (the directory's inode when it was
    /// attached): a directory at the same path with another id was made anew;
    /// [`NOT_ATTACHED`] while `blocker run` waits for the cgroup to be made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// Whether its links are pinned (it outlives its process).
    pub pinned: bool,
    /// Audit mode: report, block nothing.
    pub audit: bool,
    /// Whether the packet checks (`cgroup_skb/egress`) are attached. Absent in the state files
    /// of versions without them: off.
    #[serde(default)]
    pub packet_checks: bool,
    /// The socket kinds `--allow-sockets` lets the cgroup make (names of
    /// `packet::socket_kind::ALL`), judged per packet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_sockets: Vec<String>,
    /// The packet-check programs in force (`programs::PACKET_CHECKS` names), as last attached.
    /// Absent in the state files of versions that had only the egress one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_programs: Option<Vec<String>>,
    /// The DNS forwarder's port (`--dns-port`): the programs send the cgroup's DNS there, and
    /// with no process serving the instance, that DNS fails. Absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_port: Option<u16>,
    /// The addresses the DNS forwarder learned, as of the last swap: a restart learns them
    /// again until their time is up. Absent without any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learned: Vec<crate::resolve::KeptAddr>,
    /// When it was first attached, in seconds since the epoch.
    pub since: u64,
    /// The `blocker run` process serving it, if any.
    pub pid: Option<u32>,
    /// When that process started ([`start_time`]): a pid can be reused, a pid and its start
    /// time cannot. Absent in the state files of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    /// The policy sources as given to `blocker run` (paths made absolute).
    pub sources: Sources,
    pub added: Vec<LiveRule>,
    pub removed: Vec<LiveRule>,
    /// Rule counts as last compiled.
    #[serde(default)]
    pub counts: Counts,
    /// Reloads and hostname refreshes since it was started (absent in older state files).
    #[serde(default)]
    pub reloads: Reloads,
    /// The NAT64 prefixes besides the well-known one as last compiled (flags' and the policy
    /// file's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nat64: Vec<Nat64Prefix>,
    /// `--observe-capacity`: entries of observe mode's map (`None`: the default,
    /// `OBSERVE_CAPACITY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observe_capacity: Option<u32>,
}

/// How often an instance's policy was put in force again, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloads {
    /// Reloads of the sources (SIGHUP, `blocker reload`) that took effect.
    pub reloads: u64,
    /// Hostname refreshes that changed the tables.
    pub hostname_refreshes: u64,
    /// Reloads and refreshes that failed: the old policy stayed in force.
    pub failed: u64,
    /// When the policy was last read and put in force (start, reload, refresh), in seconds
    /// since the epoch.
    pub last: u64,
}

impl Reloads {
    /// Counts a reload of the sources, now.
    pub fn reloaded(&mut self) {
        self.reloads += 1;
        self.last = now_secs();
    }

    /// Counts a hostname refresh that changed the tables, now.
    pub fn refreshed(&mut self) {
        self.hostname_refreshes += 1;
        self.last = now_secs();
    }
}

/// Seconds since the epoch.
fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The packet-check programs as `blocker status` and the attached line name them: socket,
/// setsockopt, lsm (control messages), egress (per packet).
#[must_use]
pub fn hook_labels(programs: &[String]) -> Vec<&'static str> {
    let label = |name: &str| match name {
        programs::SOCKET => "socket",
        programs::SETSOCKOPT => "setsockopt",
        programs::SENDMSG_OPTIONS => "lsm",
        programs::EGRESS => "egress",
        _ => "?",
    };
    programs.iter().map(|p| label(p)).collect()
}

impl State {
    /// The packet checks this kernel runs for the instance; `None` with `--no-packet-checks`.
    #[must_use]
    pub fn packet_checks(&self) -> Option<crate::loader::PacketChecks> {
        let allowed = socket_kind::ALL
            .iter()
            .filter(|(_, name)| self.allow_sockets.iter().any(|a| a == name))
            .fold(0, |bits, (bit, _)| bits | bit);
        self.packet_checks.then(|| crate::loader::PacketChecks::for_kernel(allowed))
    }

    /// The packet-check programs in force: those recorded, or for a state of a version that
    /// recorded none, the egress one when its packet checks were on.
    #[must_use]
    pub fn packet_programs(&self) -> Vec<String> {
        match &self.packet_programs {
            Some(list) => list.clone(),
            None if self.packet_checks => vec![programs::EGRESS.to_owned()],
            None => vec![],
        }
    }

    /// A new state, attached now.
    #[must_use]
    pub fn new(name: &str, cgroup: PathBuf, sources: Sources) -> Self {
        let since = now_secs();
        Self {
            name: name.to_owned(),
            cgroup,
            target: None,
            cgroup_id: None,
            pinned: false,
            audit: false,
            packet_checks: true,
            allow_sockets: vec![],
            packet_programs: None,
            dns_port: None,
            learned: Vec::new(),
            since,
            pid: None,
            pid_start: None,
            sources,
            added: vec![],
            removed: vec![],
            counts: Counts::default(),
            reloads: Reloads { last: since, ..Reloads::default() },
            nat64: vec![],
            observe_capacity: None,
        }
    }

    /// Reads the state of an instance; `None` if it has none.
    ///
    /// # Errors
    /// A [`StateError`] when the file exists but cannot be read or parsed.
    pub fn load(paths: &InstancePaths) -> Result<Option<Self>, StateError> {
        let path = paths.state_file();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { name: paths.name.clone(), path, source }),
        };
        serde_json::from_str(&text).map(Some).map_err(|source| StateError::Parse {
            name: paths.name.clone(),
            path,
            source,
        })
    }

    /// Writes the state atomically (a new file renamed over the old), root-only.
    ///
    /// # Errors
    /// [`StateError::Write`].
    pub fn save(&self, paths: &InstancePaths) -> Result<(), StateError> {
        let err = |source| StateError::Write { name: paths.name.clone(), source };
        let tmp = paths.state.join("state.json.new");
        let text = serde_json::to_string_pretty(self).map_err(|e| err(io::Error::other(e)))?;
        write_private(&tmp, text.as_bytes()).map_err(err)?;
        fs::rename(&tmp, paths.state_file()).map_err(err)
    }

    /// The policy in force: the sources, read now, with the live edits applied.
    ///
    /// # Errors
    /// A [`PolicyError`] from the sources.
    pub fn policy(&self) -> Result<Policy, PolicyError> {
        let mut policy = Policy::load(&self.sources)?;
        policy.rules.retain(|r| !self.removed.iter().any(|live| live.is(&r.rule)));
        for live in &self.added {
            if !policy.rules.iter().any(|r| live.is(&r.rule)) {
                let rule = Rule { action: live.action, dest: live.rule.clone() };
                policy.rules.push(SourcedRule { rule, origin: Origin::Live });
            }
        }
        Ok(policy)
    }

    /// Records this process as the one serving it.
    pub fn served_by_me(&mut self) {
        let pid = std::process::id();
        self.pid = Some(pid);
        self.pid_start = start_time(pid);
    }

    /// Records that no process serves it.
    pub fn served_by_none(&mut self) {
        self.pid = None;
        self.pid_start = None;
    }

    /// The process that serves it, as far as `/proc` tells.
    #[must_use]
    pub fn server(&self) -> Server {
        match (self.pid, self.pid_start) {
            (Some(pid), Some(_)) if is_process(pid, self.pid_start) => Server::Alive(pid),
            (Some(pid), None) if is_process(pid, None) => Server::Unverified(pid),
            _ => Server::None,
        }
    }

    /// Whether a process may serve it: [`Server::Alive`] or [`Server::Unverified`].
    #[must_use]
    pub fn process_alive(&self) -> bool {
        self.server() != Server::None
    }
}

/// The process that serves an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// No process: none was recorded, or its pid is gone or now another process's.
    None,
    /// The recorded process: same pid, same program, same start time.
    Alive(u32),
    /// A process of this program has the recorded pid, but the state (written by an older
    /// version) has no start time to tell whether it is the same process.
    Unverified(u32),
}

/// Whether `pid` is a live process running this same program and, when `start` is given,
/// started at that time (so not a later process that reuses the pid).
#[must_use]
pub fn is_process(pid: u32, start: Option<u64>) -> bool {
    let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) else { return false };
    let me = std::env::current_exe().ok();
    let name = |p: &std::path::Path| p.file_name().map(std::ffi::OsStr::to_os_string);
    me.is_some_and(|me| name(&me) == name(&exe))
        && start.is_none_or(|start| start_time(pid) == Some(start))
}

/// When process `pid` started, in clock ticks after boot (field 22 of `/proc/PID/stat`).
#[must_use]
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a `/proc/PID/stat` line. The second field, the command name in parentheses,
/// may hold spaces and parentheses itself: the fields after it follow its last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()
}

/// Writes `bytes` to a new file `path` (replacing one there), root-only, never through a
/// symbolic link, and syncs it: the first half of an atomic replace.
///
/// # Errors
/// When it cannot be opened or written.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Opens `path` to read and write, made root-only if missing, never through a symbolic link.
///
/// # Errors
/// When it cannot be opened.
pub fn open_private(path: &std::path::Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// An exclusive lock on an instance, held until dropped.
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Waits for the lock of an instance (its state folder must exist).
    ///
    /// # Errors
    /// [`StateError::Lock`].
    pub fn acquire(paths: &InstancePaths) -> Result<Self, StateError> {
        let err = |source| StateError::Lock { name: paths.name.clone(), source };
        let file = open_private(&paths.lock_file()).map_err(err)?;
        // flock(2), exclusive; released when the file closes, also if the process dies.
        file.lock().map_err(err)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Lock` is `File::lock` (flock): a second holder, even in this process (another open
    /// file), waits until the first is dropped.
    #[test]
    fn the_lock_serializes_holders() {
        use std::{
            os::unix::fs::PermissionsExt as _,
            sync::atomic::{AtomicBool, Ordering},
        };
        let dir = tempfile::tempdir().unwrap();
        let paths = InstancePaths {
            name: "t".into(),
            pins: dir.path().join("pins"),
            state: dir.path().to_owned(),
        };
        let first = Lock::acquire(&paths).unwrap();
        let taken = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let second = scope.spawn(|| {
                let lock = Lock::acquire(&paths).unwrap();
                taken.store(true, Ordering::SeqCst);
                lock
            });
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert!(!taken.load(Ordering::SeqCst), "taken while held");
            drop(first);
            drop(second.join().unwrap());
        });
        assert!(taken.load(Ordering::SeqCst));
        let mode = fs::metadata(paths.lock_file()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn live_edits_apply_over_the_sources() {
        let sources = Sources {
            block: vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
            ..Sources::default()
        };
        let mut state = State::new("t", "/x".into(), sources);
        let live = |action, rule: &str| LiveRule { action, rule: rule.parse().unwrap() };
        state.removed.push(live(Action::Block, "10.0.0.1"));
        state.added.push(live(Action::Allow, "tcp://[::1]:22"));
        state.added.push(live(Action::Block, "10.0.0.2"));
        let texts: Vec<String> =
            state.policy().unwrap().rules.iter().map(|r| r.rule.to_string()).collect();
        assert_eq!(texts, ["block 10.0.0.2", "allow tcp://[::1]:22"]);
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<State>(&json).unwrap(), state);
    }

    #[test]
    fn start_time_is_field_22_after_the_last_parenthesis() {
        let stat = "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 12345 \
                    300 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("42 (x) S 1"), None);
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert!(is_process(me, start_time(me)));
        assert!(!is_process(me, start_time(me).map(|t| t + 1)), "another start: another process");
    }

    #[test]
    fn state_without_a_start_time_loads_and_its_process_is_unverified() {
        let mut state = State::new("t", "/x".into(), Sources::default());
        let json = serde_json::to_string(&state).unwrap();
        assert!(!json.contains("pid_start"), "{json}");
        state.pid = Some(std::process::id());
        let old: State = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(old.server(), Server::Unverified(std::process::id()));
        state.served_by_me();
        assert_eq!(state.server(), Server::Alive(std::process::id()));
        state.pid_start = state.pid_start.map(|t| t + 1);
        assert_eq!(state.server(), Server::None, "same pid, another start: not its process");
        assert!(!state.process_alive());
    }

    #[test]
    fn packet_checks_are_on_for_new_states_and_off_for_older_ones() {
        let state = State::new("t", "/x".into(), Sources::default());
        assert!(state.packet_checks);
        let mut json: serde_json::Value = serde_json::to_value(&state).unwrap();
        json.as_object_mut().unwrap().remove("packet_checks");
        let old: State = serde_json::from_value(json).unwrap();
        assert!(!old.packet_checks, "an older version attached none");
    }

    #[test]
    fn live_rules_keep_their_json_form() {
        let old = r#"{"action":"allow","rule":"tcp://[2001:db8::/32]:8000-8999"}"#;
        let live: LiveRule = serde_json::from_str(old).unwrap();
        assert_eq!(live.rule, "tcp://[2001:db8::/32]:8000-8999".parse().unwrap());
        assert_eq!(serde_json::to_string(&live).unwrap(), old);
        assert!(
            serde_json::from_str::<LiveRule>(r#"{"action":"block","rule":"10.1.2.3/8"}"#).is_err()
        );
    }
}
