//! `blocker run`: its arguments, and the loop of the process that serves an instance. The
//! instance's lifecycle (start, changes, stop) belongs to [`crate::instance`]; this loop
//! serves reloads (SIGHUP), hostname refreshes, events and metrics until SIGINT or SIGTERM.
use std::{
    io::{Write as _, stdout},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::Context as _;

use crate::{
    cgroup::{self, CgroupDir, CgroupError},
    cli::runtime::{Request, Signals, block_on},
    dns::{self, Forwarder},
    events::{self, EventReader},
    instance,
    learned::FastPath,
    metrics::{self, DnsCounts, Snapshot},
    pins::{self, InstancePaths},
    policy::Sources,
    privileges,
    resolve::{Learning, Names},
    rules::{Action, Destination, Nat64Prefix},
    state::{Counts, State},
    systemd,
    target::{self, Resolver, Target, TargetError},
    timings,
    view::PolicyView,
    watch::{CgroupWatch, FileWatch},
};

/// What the seed blocked when given no rule at all: example.com's old address.
pub const DEFAULT_BLOCK: &str = "93.184.216.34";

/// `--default`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DefaultVerdict {
    Allow,
    Deny,
}

/// The flags that make a policy, shared by `blocker run` and `blocker explain`.
#[derive(Debug, Default, clap::Args)]
pub struct RuleArgs {
    /// Block RULE: [tcp://|udp://]HOST[/LEN][:PORT[-PORT]]; repeatable. With no rule source at
    /// all, `run` blocks 93.184.216.34.
    #[arg(long = "block", visible_alias = "block-ip", value_name = "RULE")]
    pub block: Vec<Destination>,
    /// Allow RULE (same form as --block); repeatable
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<Destination>,
    /// Verdict for destinations no rule matches [default: the policy file's, else allow]
    #[arg(long, value_enum, value_name = "VERDICT")]
    pub default: Option<DefaultVerdict>,
    /// File of rules to block, one a line (# and ; comments, blank lines and a count after the
    /// rule allowed, as public blocklists ship them); repeatable
    #[arg(long = "block-list", value_name = "FILE")]
    pub block_list: Vec<PathBuf>,
    /// File of rules to allow, one a line; repeatable
    #[arg(long = "allow-list", value_name = "FILE")]
    pub allow_list: Vec<PathBuf>,
    /// TOML policy file (default, nat64, [[rule]] and [[list]] entries); SIGHUP to `run`
    /// re-reads it
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// NAT64 prefix (an IPv6 /96) whose addresses are judged by the IPv4 rules, as the
    /// well-known `64:ff9b::/96` always is; repeatable, up to 4
    #[arg(long, value_name = "PREFIX")]
    pub nat64: Vec<Nat64Prefix>,
}

impl RuleArgs {
    /// The rule sources as given (none at all: an empty policy).
    #[must_use]
    pub fn sources(&self) -> Sources {
        Sources {
            block: self.block.clone(),
            allow: self.allow.clone(),
            block_lists: self.block_list.clone(),
            allow_lists: self.allow_list.clone(),
            policy: self.policy.clone(),
            default: self.default.map(|d| match d {
                DefaultVerdict::Allow => Action::Allow,
                DefaultVerdict::Deny => Action::Block,
            }),
            nat64: self.nat64.clone(),
        }
    }
}

/// Arguments of `blocker run`.
#[derive(Debug, clap::Args)]
#[expect(clippy::struct_excessive_bools, reason = "on/off flags of the command line")]
pub struct RunArgs {
    /// cgroup v2 directory to attach to [default: the root of the cgroup v2 mount, found in
    /// /proc/self/mountinfo]
    #[arg(long, value_name = "DIR", group = "target")]
    pub cgroup: Option<PathBuf>,
    /// Protect the cgroup of a systemd unit: NAME.service, NAME.slice or NAME.scope (no suffix
    /// means .service)
    #[arg(long, value_name = "UNIT", group = "target", value_parser = target::unit_name)]
    pub unit: Option<String>,
    /// Protect the cgroup of a container (Docker, Podman, containerd, CRI-O), by ID or name
    #[arg(long, value_name = "ID|NAME", group = "target", value_parser = target::container_name)]
    pub container: Option<String>,
    /// When the --cgroup directory does not exist yet, load and check everything, then wait and
    /// attach as soon as it is made (`status` says "waiting"). A --unit that is not running, or
    /// a stopped Docker or Podman --container, is waited for without it
    #[arg(long)]
    pub wait_for_cgroup: bool,
    /// Protect the cgroup that process PID is in now
    #[arg(long, value_name = "PID", group = "target")]
    pub pid: Option<u32>,
    /// Protect the cgroup of a Kubernetes pod on this node, by its metadata.uid
    #[arg(long, value_name = "UID", group = "target", value_parser = target::pod_uid)]
    pub pod: Option<String>,
    /// Instance name: its maps are pinned under /sys/fs/bpf/cgroup-connect/NAME
    #[arg(long, value_name = "NAME", default_value = pins::DEFAULT_NAME)]
    pub name: String,
    /// Pin the links too: the instance keeps enforcing after this process exits, is killed
    /// or crashes, until `blocker detach NAME`
    #[arg(long)]
    pub pin: bool,
    /// Judge and report everything, block nothing; record every destination judged (observe
    /// mode, for `blocker learn`)
    #[arg(long)]
    pub audit: bool,
    /// Destinations observe mode keeps (default 32768; the least recently seen go first)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub observe_capacity: Option<u32>,
    /// Do not attach the packet checks, which close what connect and sendmsg cannot see: they
    /// refuse raw, ping, UDP-Lite and SCTP sockets, IPv6 routing headers and IPv4 source
    /// routes. Those ways around the rules stay open
    #[arg(long)]
    pub no_packet_checks: bool,
    /// Let the cgroup make sockets of these kinds (comma-separated: raw, ping, udplite, sctp,
    /// other), which the packet checks otherwise refuse when they are made; their packets are then
    /// judged one by one (a cgroup skb egress program, with a per-packet cost)
    #[arg(long, value_name = "KINDS", value_delimiter = ',', value_parser = socket_kind_name)]
    pub allow_sockets: Vec<String>,
    /// Write events (blocked attempts, audit would-be blocks) as JSON lines to FILE, or - for
    /// standard output (which then carries only those lines: status lines go to stderr); this
    /// process is then the instance's one events reader
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Print how long each start-up phase took (read, compile, record, object, verify and each
    /// program's load in it, write, attach) to stderr
    #[arg(long)]
    pub timings: bool,
    /// Where to serve metrics (the help says which formats).
    #[arg(
        long,
        value_name = "ADDR",
        help = "Serve metrics at http://ADDR/metrics (PORT alone binds to 127.0.0.1): Prometheus \
                text 0.0.4, or OpenMetrics when the scraper's Accept header asks for it"
    )]
    pub metrics: Option<String>,
    #[command(flatten)]
    pub rules: RuleArgs,
    /// Reload when the policy or list files change on disk: written in place, replaced by a
    /// rename, or swapped the way Kubernetes updates a mounted config map. A bad new file keeps
    /// the old policy.
    #[arg(long)]
    pub watch: bool,
    /// Send the cgroup's DNS (UDP and TCP to port 53, IPv4 resolvers) through a forwarder on
    /// 127.0.0.1:PORT, which puts the addresses of answers for hostname rules (`example.com`,
    /// `*.example.com`) into the tables before the application gets them. DNS to IPv6
    /// resolvers is refused then; with the forwarder gone, the cgroup's DNS fails. PORT must be
    /// below `net.ipv4.ip_unprivileged_port_start` (usually 1024), so no user can take it
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub dns_port: Option<u16>,
    /// How long a learned address stays past its answer's TTL
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "5m")]
    pub dns_grace: std::time::Duration,
    /// Learned addresses kept at most; past it the oldest learned go first (counted)
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub dns_max_learned: usize,
    /// When the kernel refuses a program, write the verifier's whole log to FILE (- for
    /// standard output); the error line shows only the verifier's reason
    #[arg(long, value_name = "FILE")]
    pub verifier_log: Option<PathBuf>,
}

/// Parses a socket kind of `--allow-sockets`.
fn socket_kind_name(name: &str) -> Result<String, String> {
    let kinds = cgroup_connect_common::packet::socket_kind::ALL;
    if kinds.iter().any(|(_, k)| *k == name) {
        Ok(name.to_owned())
    } else {
        let known: Vec<&str> = kinds.iter().map(|(_, k)| *k).collect();
        Err(format!("unknown socket kind {name:?}: one of {}", known.join(", ")))
    }
}

/// The end of the attached line: which packet checks are in force (", packet checks off"
/// when none).
#[must_use]
pub fn packet_checks_summary(programs: &[String]) -> String {
    if programs.is_empty() {
        return ", packet checks off".to_owned();
    }
    format!(", packet checks on: {}", crate::state::hook_labels(programs).join("+"))
}

impl RunArgs {
    /// The workload as named by --unit, --container, --pid or --pod, if one of them is given.
    #[must_use]
    pub fn target(&self) -> Option<Target> {
        self.unit
            .clone()
            .map(Target::Unit)
            .or_else(|| self.container.clone().map(Target::Container))
            .or_else(|| self.pid.map(Target::Pid))
            .or_else(|| self.pod.clone().map(Target::Pod))
    }

    /// The rule sources, with the seed's default rule when none is given.
    ///
    /// # Panics
    /// Never: the seed's rule is valid.
    #[must_use]
    pub fn sources(&self) -> Sources {
        let mut sources = self.rules.sources();
        if sources.is_empty() {
            sources.block.push(DEFAULT_BLOCK.parse().expect("valid default rule"));
        }
        sources
    }
}

/// Runs until SIGINT or SIGTERM (which end it in any phase: before it attaches, nothing is
/// left behind).
///
/// # Errors
/// A bad name, cgroup directory, rule or policy file, an unresolvable hostname, missing
/// privileges, a busy instance, an events file or metrics address that cannot be opened, an
/// events reader already there, or a load or attach failure; nothing new stays attached,
/// pinned or recorded after an error.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let paths = InstancePaths::new(&args.name)?;
    let target = args.target();
    let cgroup = place(args, target.as_ref())?;
    let mut state = State::new(&args.name, cgroup.path.clone(), args.sources().absolute());
    state.target = target;
    state.audit = args.audit;
    state.observe_capacity = args.observe_capacity;
    state.packet_checks = !args.no_packet_checks;
    state.dns_port = args.dns_port.map(privileged_port).transpose()?;
    state.allow_sockets.clone_from(&args.allow_sockets);
    state.pinned = args.pin;
    let metrics_addr = args.metrics.as_deref().map(metrics::parse_addr).transpose()?;
    privileges::check()?;
    // Opened before anything attaches, so a refused file leaves nothing behind.
    let sink = args.events.as_deref().map(events::open_sink).transpose()?;
    let say = Say { to_stderr: args.events.as_ref().is_some_and(|p| p.as_os_str() == "-") };
    let result = block_on(serve(args, &paths, &cgroup, state, metrics_addr, sink, say));
    if let (Err(err), Some(path)) = (&result, &args.verifier_log)
        && let Err(e) = crate::loader::write_verifier_log(err.as_ref(), path)
    {
        tracing::warn!("{e:#}");
    }
    result
}

/// The cgroup to attach to: open, or not made yet (with why it is waited for).
struct Place {
    dir: Option<CgroupDir>,
    path: PathBuf,
    waiting: Option<String>,
}

impl Place {
    fn open(dir: CgroupDir) -> Self {
        Self { path: dir.path().to_owned(), dir: Some(dir), waiting: None }
    }

    /// `path`, checked by [`cgroup::awaited`].
    fn awaited(path: &std::path::Path, why: String) -> Result<Self, CgroupError> {
        Ok(Self { path: cgroup::awaited(path)?, dir: None, waiting: Some(why) })
    }
}

/// The cgroup `--cgroup`, the target or the root names. One that does not exist is waited
/// for with `--wait-for-cgroup`, and for a unit that is not running.
fn place(args: &RunArgs, target: Option<&Target>) -> anyhow::Result<Place> {
    let Some(target) = target else {
        let dir = args.cgroup.clone().map_or_else(cgroup::cgroup2_root, Ok)?;
        return match CgroupDir::open(&dir) {
            Err(CgroupError::NotFound { .. } | CgroupError::OffTree { .. })
                if args.wait_for_cgroup =>
            {
                Ok(Place::awaited(&dir, "it does not exist yet".to_owned())?)
            }
            opened => Ok(Place::open(opened?)),
        };
    };
    let resolver = Resolver::host(cgroup::cgroup2_root()?);
    match resolver.resolve(target) {
        Ok(path) => Ok(Place::open(CgroupDir::open(path)?)),
        Err(e @ (TargetError::NotFound { .. } | TargetError::NotRunning { .. })) => {
            match resolver.awaited(target) {
                Some(path) => Ok(Place::awaited(&path, format!("{target} is not running"))?),
                None if args.wait_for_cgroup => Err(anyhow::Error::from(e).context(format!(
                    "--wait-for-cgroup: where the cgroup of {target} will be made cannot be \
                     known before it is; give --cgroup DIR --wait-for-cgroup with its path"
                ))),
                None => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Where the status lines (attached, serving metrics, reloaded, detached) go: standard
/// output, or standard error when `--events -` leaves standard output to the event lines.
#[derive(Clone, Copy)]
struct Say {
    to_stderr: bool,
}

impl Say {
    /// Writes one status line and flushes it.
    fn line(self, text: &str) -> std::io::Result<()> {
        if self.to_stderr {
            writeln!(std::io::stderr().lock(), "{text}")
        } else {
            let mut out = stdout().lock();
            writeln!(out, "{text}")?;
            out.flush()
        }
    }
}

/// An events reader and where its lines go.
type Events = (EventReader, Box<dyn std::io::Write + Send>);

#[expect(clippy::too_many_lines, reason = "the serving loop: one select branch per source")]
async fn serve(
    args: &RunArgs,
    paths: &InstancePaths,
    cgroup: &Place,
    state: State,
    metrics_addr: Option<std::net::SocketAddr>,
    sink: Option<Box<dyn std::io::Write + Send>>,
    say: Say,
) -> anyhow::Result<()> {
    // Watched from before the start, so no change is missed.
    let mut files = args.watch.then(|| watch_given_files(&state.sources)).transpose()?;
    let mut signals = Signals::new(true)?;
    let mut names = Names::new();
    names.set_learning(Learning { grace: args.dns_grace, max: args.dns_max_learned });
    names.want_fast(args.dns_port.is_some());
    // Bound before anything attaches, so a busy port leaves nothing behind.
    let forwarder = bind_forwarder(args.dns_port).await?;
    let listener = match metrics_addr {
        Some(addr) => {
            Some(metrics::bind(addr).await.with_context(|| format!("serving metrics on {addr}"))?)
        }
        None => None,
    };
    let starting = instance::start(paths, cgroup.dir.as_ref(), state, &mut names, sink.is_some());
    let Some(started) = unless_stopped(&mut signals, starting).await? else {
        let _ = say.line("stopped before attaching: nothing was attached");
        return Ok(());
    };
    let instance::Started { mut instance, adopted, reattached, applied, packet_programs, reader } =
        started;
    let view = Arc::new(Mutex::new(PolicyView::new(paths)));
    // What can still fail fails before `attached` is printed, and then takes down what this
    // start made (a pinned instance that was adopted keeps enforcing, as before it).
    let ready =
        dns_forwarder(paths, forwarder, names.take_fast(), args.dns_grace).and_then(|learned| {
            let counts = learned.as_ref().map(|l| Arc::clone(&l.counts));
            Ok((learned, reporting(&mut instance, paths, &view, sink, listener, counts.as_ref())?))
        });
    let (mut learned, (mut events, metrics)) = match ready {
        Ok(ready) => ready,
        Err(e) => {
            let _ = instance::stop(paths, instance, args.pin && adopted);
            return Err(e);
        }
    };
    let started = (adopted, reattached);
    let mut follower =
        announce_start(args, paths, cgroup, started, &applied, &packet_programs, say)?;
    let report = timings::take_report();
    if args.timings {
        eprintln!("{report}");
    }
    if let Some(files) = files.as_mut() {
        watch_rule_files(files, &applied.policy);
    }
    drop(applied);
    instance::release_free_memory();
    let _reader = reader; // held while this process reads the events
    let metrics_task = metrics.map(|metrics| announce(metrics, say));
    if follower.pending.is_some() {
        // Made while the start ran, before the watch: attached now.
        follower.follow(Ok(()), paths, &mut instance, args.pin, say);
    }
    loop {
        let refresh = names.next_refresh().map(tokio::time::Instant::from_std);
        let fold_at = learned.as_ref().and_then(|l| l.fold_at);
        tokio::select! {
            changed = next_change(files.as_mut()) => match changed {
                Ok(()) => {
                    systemd::reloading();
                    reload(paths, &mut names, Reload::Files, say, files.as_mut(), args.audit, &view).await;
                }
                Err(e) => {
                    tracing::warn!("watching the rule files failed: {e}; reload with SIGHUP");
                    files = None;
                }
            },
            changed = follower.changed() => follower.follow(changed, paths, &mut instance, args.pin, say),
            request = signals.next() => match request {
                Request::Stop => break,
                Request::Reload => {
                    systemd::reloading();
                    reload(paths, &mut names, Reload::Signal, say, files.as_mut(), args.audit, &view).await;
                }
            },
            Some(answer) = next_learned(learned.as_mut()) => learn(paths, &mut names, answer, say, args.audit, &view, learned.as_mut()).await,
            () = sleep_until(fold_at) => fold(paths, &mut names, say, args.audit, &view, learned.as_mut()).await,
            () = sleep_until(refresh) => {
                if names.refresh().await {
                    reload(paths, &mut names, Reload::Refresh, say, files.as_mut(), args.audit, &view).await;
                }
            }
            result = next_events(&mut events, &view) => {
                if let Err(e) = result {
                    tracing::warn!("writing events failed: {e:#}; no longer writing them");
                    events = None;
                }
            }
        }
        share_dns_counts(learned.as_ref(), &names);
        fast_policy(learned.as_ref(), &mut names);
    }
    fold(paths, &mut names, say, args.audit, &view, learned.as_mut()).await;
    if let Some(task) = metrics_task {
        task.abort();
    }
    // An instance that never attached leaves nothing, pinned or not.
    let pin = args.pin && (adopted || follower.pending.is_none());
    systemd::stopping(if pin { "stopping; the pinned instance stays" } else { "detaching" });
    instance::stop(paths, instance, pin)?;
    let (name, cgroup) = (&paths.name, cgroup.path.display());
    let _ = say.line(&if follower.pending.is_some() {
        format!("stopped while waiting for cgroup {cgroup}: nothing was attached")
    } else if pin {
        format!("exiting; instance {name} stays attached to {cgroup} (pinned)")
    } else {
        format!("detached from cgroup {cgroup}")
    });
    Ok(())
}

/// Prints the `attached` line and tells systemd it is ready, or, for a cgroup not made yet,
/// prints the `waiting` line and keeps both for the attach; returns the follower of the cgroup.
fn announce_start(
    args: &RunArgs,
    paths: &InstancePaths,
    cgroup: &Place,
    (adopted, reattached): (bool, bool),
    applied: &instance::Applied,
    packet_programs: &[String],
    say: Say,
) -> anyhow::Result<Follower> {
    let how = match (adopted, reattached) {
        (true, false) => " (adopted from its pins)",
        (true, true) => " (adopted from its pins; re-attached: the cgroup was made anew)",
        (false, _) => "",
    };
    let (cgroup_path, summary) = (cgroup.path.display(), applied.summary(args.audit));
    let checks = packet_checks_summary(packet_programs);
    let attached_line = format!(
        "attached to cgroup {cgroup_path} as instance {}{how}: {summary}{checks}",
        paths.name
    );
    let status = status_line(&applied.counts, args.audit);
    let mut follower = Follower::new(&cgroup.path, cgroup.dir.as_ref());
    if let Some(why) = &cgroup.waiting {
        say.line(&format!(
            "waiting for cgroup {cgroup_path} ({why}): nothing is judged until it is made; \
             attaching as soon as it is"
        ))
        .context("writing the waiting line")?;
        systemd::status(&format!("waiting for cgroup {cgroup_path}"));
        follower.pending = Some((attached_line, status));
    } else {
        say.line(&attached_line).context("writing the attached line")?;
        systemd::ready(&status);
    }
    Ok(follower)
}

/// Runs `work` to its end, or drops it (None) at SIGINT or SIGTERM; a reload request meanwhile
/// has nothing to re-read yet.
async fn unless_stopped<T>(
    signals: &mut Signals,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<Option<T>> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done.map(Some),
            request = signals.next() => if request == Request::Stop {
                return Ok(None);
            },
        }
    }
}

/// `--watch`: the files given on the command line, watched from before the start.
///
/// # Errors
/// [`WatchError`] when no file is given, or a folder cannot be watched.
fn watch_given_files(sources: &crate::policy::Sources) -> Result<FileWatch, WatchError> {
    let files: Vec<PathBuf> = sources
        .policy
        .iter()
        .chain(&sources.block_lists)
        .chain(&sources.allow_lists)
        .cloned()
        .collect();
    if files.is_empty() {
        return Err(WatchError::NoFile);
    }
    FileWatch::new(files).map_err(WatchError::Io)
}

/// A `--dns-port` that an unprivileged user could bind.
#[derive(Debug, thiserror::Error)]
#[error(
    "--dns-port {port}: choose a port below {start} (net.ipv4.ip_unprivileged_port_start): \
     whenever the forwarder is down, any local user could bind 127.0.0.1:{port} and answer the \
     cgroup's DNS"
)]
pub struct DnsPortError {
    pub port: u16,
    pub start: u32,
}

/// `port` if only a privileged process may bind it in this network namespace: the programs
/// keep sending the cgroup's DNS there while the forwarder is down (a pinned instance).
fn privileged_port(port: u16) -> Result<u16, DnsPortError> {
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if u32::from(port) < start { Ok(port) } else { Err(DnsPortError { port, start }) }
}

/// Why `--watch` cannot watch.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("--watch needs a file to watch: give --policy, --block-list or --allow-list")]
    NoFile,
    #[error("--watch: cannot watch the folders of the rule files")]
    Io(#[source] std::io::Error),
}

/// Watches every file a rule came from too (the lists a policy names).
fn watch_rule_files(files: &mut FileWatch, policy: &crate::policy::Policy) {
    let mut more: Vec<PathBuf> = Vec::new();
    for rule in policy.rules.iter() {
        if let crate::policy::Origin::Line { path, .. } = &rule.origin
            && !more.iter().any(|f| **f == **path)
        {
            more.push(path.to_path_buf());
        }
    }
    if let Err(e) = files.add(more) {
        tracing::warn!(
            "watching the lists the policy names failed: {e}; the files given on the command line are watched"
        );
    }
}

/// The next change of the watched files; never, without `--watch`.
async fn next_change(files: Option<&mut FileWatch>) -> std::io::Result<()> {
    match files {
        Some(files) => files.changed().await,
        None => std::future::pending().await,
    }
}

/// Follows the instance's cgroup: attaches when a cgroup that was not made yet is made, and
/// through removal and re-creation at the same path (a service restart) says when it is gone
/// and attaches to the new directory as soon as it appears; told by inotify on the nearest
/// directory of the path that exists, and by a check every second as well.
struct Follower {
    path: PathBuf,
    attached: u64,
    watch: Option<CgroupWatch>,
    waiting: bool,
    /// Until the first attach (a cgroup not made yet): the `attached` line to print then, and
    /// the status for systemd's `READY=1`.
    pending: Option<(String, String)>,
}

impl Follower {
    /// Follows `path`, open as `cgroup` or not made yet. Never fails: without inotify it
    /// checks every second.
    fn new(path: &std::path::Path, cgroup: Option<&CgroupDir>) -> Self {
        let path = path.to_owned();
        let watch = match path.parent().map(|_| CgroupWatch::new(&path)) {
            Some(Ok(watch)) => Some(watch),
            Some(Err(e)) => {
                tracing::warn!(
                    "cannot watch cgroup {} ({e}): checking it every second",
                    path.display()
                );
                None
            }
            // The root of the tree is never removed.
            None => None,
        };
        // Unreadable (never, for a directory this process holds open): the first check
        // attaches again, which is harmless.
        let attached = cgroup.map_or(crate::state::NOT_ATTACHED, |c| c.id().unwrap_or(0));
        Self { path, attached, watch, waiting: cgroup.is_none(), pending: None }
    }

    /// An inotify event about the directory, or a second gone by.
    async fn changed(&mut self) -> std::io::Result<()> {
        let tick = tokio::time::sleep(std::time::Duration::from_secs(1));
        if let Some(watch) = self.watch.as_mut() {
            tokio::select! {
                changed = watch.changed() => changed,
                () = tick => Ok(()),
            }
        } else {
            tick.await;
            Ok(())
        }
    }

    /// Acts on what [`Follower::changed`] returned.
    fn follow(
        &mut self,
        changed: std::io::Result<()>,
        paths: &InstancePaths,
        instance: &mut crate::loader::Instance,
        pinned: bool,
        say: Say,
    ) {
        if let Err(e) = changed {
            tracing::warn!(
                "watching cgroup {} failed: {e}; checking it every second",
                self.path.display()
            );
            self.watch = None;
        }
        let Ok(meta) = std::fs::metadata(&self.path) else {
            if !self.waiting {
                let _ = say
                    .line(&format!("waiting for cgroup {}: it was removed", self.path.display()));
                self.waiting = true;
            }
            return;
        };
        let id = std::os::unix::fs::MetadataExt::ino(&meta);
        if id == self.attached {
            return;
        }
        let done = CgroupDir::open_awaited(&self.path)
            .map_err(anyhow::Error::from)
            .and_then(|dir| instance::follow(paths, instance, &dir, pinned).map(|()| dir));
        match done {
            Ok(dir) => {
                self.attached = dir.id().unwrap_or(id);
                self.waiting = false;
                if let Some((line, status)) = self.pending.take() {
                    let _ = say.line(&line);
                    systemd::ready(&status);
                } else {
                    let _ = say.line(&format!(
                        "re-attached to cgroup {}: it was made anew",
                        self.path.display()
                    ));
                }
            }
            Err(e) => tracing::error!(
                "cgroup {} was made, attaching to it failed (will retry): {e:#}",
                self.path.display()
            ),
        }
    }
}

/// The metrics server: its address and its task.
type Metrics = (std::net::SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>);

/// Says where the metrics are served (warning when the address is not loopback); their task.
fn announce((bound, task): Metrics, say: Say) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let _ = say.line(&format!("serving metrics on http://{bound}/metrics"));
    if let Some(warning) = metrics::exposure_warning(bound) {
        tracing::warn!("{warning}");
    }
    task
}

/// The events reader and the metrics server of a started instance.
fn reporting(
    instance: &mut crate::loader::Instance,
    paths: &InstancePaths,
    view: &Arc<Mutex<PolicyView>>,
    sink: Option<Box<dyn std::io::Write + Send>>,
    listener: Option<tokio::net::TcpListener>,
    dns: Option<&Arc<metrics::SharedDnsCounts>>,
) -> anyhow::Result<(Option<Events>, Option<Metrics>)> {
    let events = match sink {
        Some(sink) => Some((EventReader::new(instance.take_events()?)?, sink)),
        None => None,
    };
    let metrics = match listener {
        Some(listener) => {
            let (paths, view, dns) = (paths.clone(), Arc::clone(view), dns.cloned());
            let snapshot = Arc::new(move || {
                let mut view = view.lock().unwrap_or_else(PoisonError::into_inner);
                let mut snapshot = Snapshot::read(&paths, &mut view);
                snapshot.dns = dns.as_ref().map(|dns| dns.get());
                snapshot
            });
            let (bound, server) = metrics::serve(listener, snapshot).context("serving metrics")?;
            Some((bound, tokio::spawn(server)))
        }
        None => None,
    };
    Ok((events, metrics))
}

/// The `STATUS=` systemd shows: the rule counts and the mode.
fn status_line(counts: &Counts, audit: bool) -> String {
    format!(
        "{} {} rules ({} IPv4, {} IPv6 prefixes)",
        if audit { "auditing" } else { "enforcing" },
        counts.rules,
        counts.ipv4,
        counts.ipv6
    )
}

/// What made `run` reload.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reload {
    /// SIGHUP (`blocker reload` sends none: it applies the change itself).
    Signal,
    /// `--watch` saw the files change.
    Files,
    /// A hostname re-resolved to other addresses, or learned addresses expired.
    Refresh,
    /// The DNS forwarder learned addresses for a hostname rule.
    Learned,
}

/// Re-reads the sources and swaps the tables, counting it; on failure the old policy stays in
/// force. With `--watch`, the files of the new policy are watched from then on. Returns whether
/// the new tables are in force.
async fn reload(
    paths: &InstancePaths,
    names: &mut Names,
    why: Reload,
    say: Say,
    files: Option<&mut FileWatch>,
    audit: bool,
    view: &Mutex<PolicyView>,
) -> bool {
    // The rule texts in force are let go while the new policy compiles (not held beside it);
    // the next event or scrape reads them from the record in force then.
    view.lock().unwrap_or_else(PoisonError::into_inner).forget();
    let what = match why {
        Reload::Signal => "reloaded",
        Reload::Files => "files changed on disk, reloaded",
        Reload::Refresh => "hostnames re-resolved",
        Reload::Learned => "hostnames learned from DNS",
    };
    let count = |state: &mut State| {
        if matches!(why, Reload::Refresh | Reload::Learned) {
            state.reloads.refreshed();
        } else {
            state.reloads.reloaded();
        }
        Ok(())
    };
    match instance::apply(paths, names, count).await {
        Ok(applied) => {
            if why == Reload::Learned {
                // One a DNS answer: not a line each.
                tracing::debug!("{what}: {}", applied.summary(false));
            } else {
                let _ = say.line(&format!("{what}: {}", applied.summary(false)));
            }
            systemd::ready(&status_line(&applied.counts, audit));
            if let Some(files) = files {
                watch_rule_files(files, &applied.policy);
            }
            true
        }
        Err(e) => {
            tracing::error!("{what} failed, the old policy stays in force: {e:#}");
            systemd::ready(&format!("{what} failed, the old policy stays in force"));
            instance::count_failed_reload(paths);
            false
        }
    }
}

/// Waits for the next events and writes them; never resolves without a reader.
async fn next_events(events: &mut Option<Events>, view: &Mutex<PolicyView>) -> anyhow::Result<()> {
    let Some((reader, sink)) = events else { return std::future::pending().await };
    let batch = reader.next_batch().await?;
    let mut view = view.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(events::write_batch(&batch, &mut view, sink, true)?)
}

/// Binds the DNS forwarder's sockets, when `--dns-port` asks for them.
async fn bind_forwarder(port: Option<u16>) -> anyhow::Result<Option<Forwarder>> {
    let Some(port) = port else { return Ok(None) };
    let forwarder = Forwarder::bind(port)
        .await
        .with_context(|| format!("binding the DNS forwarder on 127.0.0.1:{port}"))?;
    Ok(Some(forwarder))
}

/// A running forwarder, as the serving loop sees it.
struct Learned {
    /// Where its answers arrive.
    answers: tokio::sync::mpsc::Receiver<dns::Learn>,
    /// The learned addresses' counts, for the metrics (set after each turn of the loop).
    counts: Arc<metrics::SharedDnsCounts>,
    /// The fast path, unless the instance's pins lack its map (pinned by an older version).
    fast: Option<dns::Fast>,
    /// Writes of the fast path's map that the serving loop learned and the tables do not
    /// hold yet, and when to fold them in.
    pending: Vec<(std::net::IpAddr, u64)>,
    fold_at: Option<tokio::time::Instant>,
}

/// How long new addresses wait in the fast path's map before one swap folds them into the
/// tables: answers that come together share a swap.
const FOLD_DELAY: std::time::Duration = std::time::Duration::from_millis(50);
/// How long after a failed fold the next one is tried.
const FOLD_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts the forwarder (its port is in the programs since the start: the calls that came
/// in between wait in its bound sockets), with the fast path for new addresses when the
/// instance's pins have its map.
fn dns_forwarder(
    paths: &InstancePaths,
    forwarder: Option<Forwarder>,
    policy: Option<crate::learned::Policy>,
    grace: std::time::Duration,
) -> anyhow::Result<Option<Learned>> {
    use cgroup_connect_common::maps;
    let Some(forwarder) = forwarder else { return Ok(None) };
    let (tx, answers) = tokio::sync::mpsc::channel(1024);
    let fast = match FastPath::open(&paths.map(maps::DNS_LEARNED), &paths.map(maps::CONFIG)) {
        Ok(mut path) => {
            path.set_policy(policy.unwrap_or_default());
            Some(dns::Fast { path: Arc::new(Mutex::new(path)), grace })
        }
        Err(e) => {
            tracing::warn!(
                "the DNS forwarder's fast path is off ({e:#}): each answer with a new address \
                 waits for a table swap; restart the instance without its pins to have it"
            );
            None
        }
    };
    forwarder.spawn(&paths.map(maps::DNS_ORIGINS), tx, fast.clone())?;
    Ok(Some(Learned { answers, counts: Arc::default(), fast, pending: Vec::new(), fold_at: None }))
}

/// Gives the fast path what the last compile knew of the policy, if a swap was made.
fn fast_policy(learned: Option<&Learned>, names: &mut Names) {
    let Some(fast) = learned.and_then(|l| l.fast.as_ref()) else { return };
    if let Some(policy) = names.take_fast() {
        fast.path.lock().unwrap_or_else(PoisonError::into_inner).set_policy(policy);
    }
}

/// Folds the fast path's pending addresses into the tables (one swap), then takes them out
/// of its map; a failed swap leaves them there (they decide until their time is up) and tries
/// again later. Also at the end of serving: into the tables and the state before a pinned
/// instance goes on alone.
async fn fold(
    paths: &InstancePaths,
    names: &mut Names,
    say: Say,
    audit: bool,
    view: &Mutex<PolicyView>,
    learned: Option<&mut Learned>,
) {
    let Some(learned) = learned else { return };
    learned.fold_at = None;
    if learned.pending.is_empty() {
        return;
    }
    if !reload(paths, names, Reload::Learned, say, None, audit, view).await {
        learned.fold_at = Some(tokio::time::Instant::now() + FOLD_RETRY);
        return;
    }
    fast_policy(Some(learned), names);
    if let Some(fast) = &learned.fast {
        let mut path = fast.path.lock().unwrap_or_else(PoisonError::into_inner);
        path.folded(&learned.pending);
    }
    learned.pending.clear();
}

/// Shares the counts of the addresses `names` learned with the metrics.
fn share_dns_counts(learned: Option<&Learned>, names: &Names) {
    if let Some(learned) = learned {
        let n = u64::try_from(names.learned_count()).unwrap_or(u64::MAX);
        let fast = learned
            .fast
            .as_ref()
            .map_or(0, |f| f.path.lock().unwrap_or_else(PoisonError::into_inner).writes());
        learned.counts.set(DnsCounts { learned: n, evicted: names.evicted(), fast });
    }
}

/// Puts an answer's addresses in force (a swap, when a name got a new one), then lets the
/// forwarder pass it on; a failed swap drops it (fails closed). An answer the fast path passed
/// on already is learned, and its new addresses folded into the tables a little later.
async fn learn(
    paths: &InstancePaths,
    names: &mut Names,
    answer: dns::Learn,
    say: Say,
    audit: bool,
    view: &Mutex<PolicyView>,
    learned: Option<&mut Learned>,
) {
    let changed = names.learn(&answer.chain, &answer.addrs);
    let Some(done) = answer.done else {
        if let Some(learned) = learned
            && (changed || !answer.written.is_empty())
        {
            learned.pending.extend(answer.written);
            learned.fold_at.get_or_insert_with(|| tokio::time::Instant::now() + FOLD_DELAY);
        }
        return;
    };
    let in_force = !changed || reload(paths, names, Reload::Learned, say, None, audit, view).await;
    if let Some(learned) = learned {
        fast_policy(Some(learned), names);
        if in_force && let Some(fast) = &learned.fast {
            fast.path.lock().unwrap_or_else(PoisonError::into_inner).folded(&answer.written);
        } else if !answer.written.is_empty() {
            learned.pending.extend(answer.written);
            learned.fold_at.get_or_insert_with(|| tokio::time::Instant::now() + FOLD_RETRY);
        }
    }
    let _ = done.send(in_force);
}

async fn next_learned(learned: Option<&mut Learned>) -> Option<dns::Learn> {
    match learned {
        Some(learned) => learned.answers.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(
            std::iter::once("blocker").chain(std::iter::once("run")).chain(args.iter().copied()),
        )?;
        let Command::Run(args) = cli.command else { panic!("not run") };
        Ok(*args)
    }

    #[test]
    fn block_ip_is_an_alias_of_block() {
        let args = parse(&[
            "--block-ip",
            "10.0.0.1",
            "--block",
            "127.0.0.2:80",
            "--allow",
            "udp://[::1]:53",
        ])
        .unwrap();
        let texts: Vec<String> = args.rules.block.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["10.0.0.1", "127.0.0.2:80"]);
        assert_eq!(args.rules.allow[0].to_string(), "udp://[::1]:53");
        assert_eq!(args.cgroup, None);
        assert_eq!(args.name, "default");
        assert!(!args.pin && !args.audit);
    }

    #[test]
    fn no_rule_source_blocks_the_seed_address() {
        let sources = parse(&["--cgroup", "/sys/fs/cgroup/x"]).unwrap().sources();
        assert_eq!(sources.block.len(), 1);
        assert_eq!(sources.block[0].to_string(), DEFAULT_BLOCK);
        let sources = parse(&["--allow", "10.0.0.1"]).unwrap().sources();
        assert!(sources.block.is_empty(), "an allow rule is a rule source");
    }

    #[test]
    fn operations_flags_are_taken() {
        let args =
            parse(&["--name", "web", "--pin", "--audit", "--events", "-", "--metrics", "9100"])
                .unwrap();
        assert_eq!(args.name, "web");
        assert!(args.pin && args.audit);
        assert_eq!(args.events, Some(PathBuf::from("-")));
        assert_eq!(args.metrics.as_deref(), Some("9100"));
    }

    #[test]
    fn default_and_files_are_taken() {
        let args = parse(&[
            "--default",
            "deny",
            "--block-list",
            "a.txt",
            "--allow-list",
            "b.txt",
            "--policy",
            "p.toml",
        ])
        .unwrap();
        let sources = args.sources();
        assert_eq!(sources.default, Some(Action::Block));
        assert_eq!(sources.block_lists, [PathBuf::from("a.txt")]);
        assert_eq!(sources.allow_lists, [PathBuf::from("b.txt")]);
        assert_eq!(sources.policy, Some(PathBuf::from("p.toml")));
        assert!(parse(&["--default", "maybe"]).unwrap_err().to_string().contains("maybe"));
    }

    #[test]
    fn nat64_prefixes_are_taken_and_checked() {
        let args = parse(&["--nat64", "2001:db8:64::/96", "--nat64", "2001:db8:65::/96"]).unwrap();
        let texts: Vec<String> = args.sources().nat64.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["2001:db8:64::/96", "2001:db8:65::/96"]);
        let err = parse(&["--nat64", "2001:db8:64::/64"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("\"2001:db8:64::/64\" is not an IPv6 /96"), "{err}");
    }

    #[test]
    fn invalid_rule_names_the_value() {
        let err = parse(&["--block-ip", "300.1.2.3"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("300.1.2.3"), "{err}");
    }
}
