//! `blocker run`: read the policy, resolve hostnames, compile the tables, then create the
//! instance (or adopt a pinned one of the same name, with no window without enforcement),
//! stay attached until SIGINT or SIGTERM while serving reloads (SIGHUP), hostname refreshes,
//! events and metrics, and on exit detach (or, with `--pin`, leave it enforcing).
use std::{
    io::Write as _,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, bail};

use crate::{
    cgroup::{self, CgroupDir},
    control::{self, Counts, PolicyView},
    events::{EventLine, EventReader},
    loader::{self, Instance, LoadError, Prepared},
    metrics::{self, Snapshot},
    pins::{self, InstancePaths},
    policy::{Policy, Sources},
    privileges,
    resolve::Names,
    rules::{Action, Destination},
    state::{Lock, State},
    table::Tables,
};

/// What the seed blocked when given no rule at all: example.com's old address.
pub const DEFAULT_BLOCK: &str = "93.184.216.34";

/// `--default`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DefaultVerdict {
    Allow,
    Deny,
}

/// Arguments of `blocker run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// cgroup v2 directory to attach to [default: the root of the cgroup v2 mount, found in
    /// /proc/self/mountinfo]
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Instance name: its maps are pinned under /sys/fs/bpf/cgroup-connect/NAME
    #[arg(long, value_name = "NAME", default_value = pins::DEFAULT_NAME)]
    pub name: String,
    /// Pin the links too: the instance keeps enforcing after this process exits, is killed
    /// or crashes, until `blocker detach NAME`
    #[arg(long)]
    pub pin: bool,
    /// Judge and report everything, block nothing
    #[arg(long)]
    pub audit: bool,
    /// Write events (blocked attempts, audit would-be blocks) as JSON lines to FILE, or - for
    /// standard output
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Print how long each start-up phase took (read, compile, write, attach) to stderr
    #[arg(long)]
    pub timings: bool,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (PORT alone binds to 127.0.0.1)
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Block RULE: [tcp://|udp://]HOST[/LEN][:PORT[-PORT]]; repeatable. With no rule source at
    /// all, 93.184.216.34 is blocked.
    #[arg(long = "block", visible_alias = "block-ip", value_name = "RULE")]
    pub block: Vec<Destination>,
    /// Allow RULE (same form as --block); repeatable
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<Destination>,
    /// Verdict for destinations no rule matches [default: the policy file's, else allow]
    #[arg(long, value_enum, value_name = "VERDICT")]
    pub default: Option<DefaultVerdict>,
    /// File of rules to block, one a line (# comments, blank lines allowed); repeatable
    #[arg(long = "block-list", value_name = "FILE")]
    pub block_list: Vec<PathBuf>,
    /// File of rules to allow, one a line; repeatable
    #[arg(long = "allow-list", value_name = "FILE")]
    pub allow_list: Vec<PathBuf>,
    /// TOML policy file (default, [[rule]] and [[list]] entries); SIGHUP re-reads it
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

impl RunArgs {
    /// The rule sources, with the seed's default rule when none is given.
    ///
    /// # Panics
    /// Never: the seed's rule is valid.
    #[must_use]
    pub fn sources(&self) -> Sources {
        let mut sources = Sources {
            block: self.block.clone(),
            allow: self.allow.clone(),
            block_lists: self.block_list.clone(),
            allow_lists: self.allow_list.clone(),
            policy: self.policy.clone(),
            default: self.default.map(|d| match d {
                DefaultVerdict::Allow => Action::Allow,
                DefaultVerdict::Deny => Action::Block,
            }),
        };
        if sources.is_empty() {
            sources.block.push(DEFAULT_BLOCK.parse().expect("valid default rule"));
        }
        sources
    }
}

/// Another process serves the instance already.
#[derive(Debug, thiserror::Error)]
#[error("instance {name} is already run by process {pid}: stop it, or pick another --name")]
pub struct BusyError {
    pub name: String,
    pub pid: u32,
}

/// The pinned instance of that name is attached elsewhere.
#[derive(Debug, thiserror::Error)]
#[error(
    "instance {name} is attached to cgroup {}, not {}: `blocker detach {name}` first, or pick another --name",
    attached.display(), wanted.display()
)]
pub struct ElsewhereError {
    pub name: String,
    pub attached: PathBuf,
    pub wanted: PathBuf,
}

/// Runs until SIGINT or SIGTERM.
///
/// # Errors
/// A bad name, cgroup directory, rule or policy file, an unresolvable hostname, missing
/// privileges, a busy instance, or a load or attach failure; nothing new stays attached after
/// an error.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let paths = InstancePaths::new(&args.name)?;
    let cgroup = match &args.cgroup {
        Some(dir) => CgroupDir::open(dir)?,
        None => CgroupDir::open(cgroup::cgroup2_root()?)?,
    };
    let mut state = State::new(&args.name, cgroup.path().to_owned(), args.sources().absolute());
    state.audit = args.audit;
    state.pinned = args.pin;
    let metrics_addr = args.metrics.as_deref().map(metrics::parse_addr).transpose()?;
    privileges::check()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(serve(args, &paths, &cgroup, state, metrics_addr))
}

async fn serve(
    args: &RunArgs,
    paths: &InstancePaths,
    cgroup: &CgroupDir,
    mut state: State,
    metrics_addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    // The verifier takes most of a start: let it run while the policy is read and compiled,
    // unless a pinned instance will be adopted (its programs are loaded already).
    // One malloc arena for both threads, so what the loader frees can be given back.
    // SAFETY: mallopt only tunes the allocator.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let preparing = (!paths.has_pinned_links()).then(|| std::thread::spawn(Prepared::load));
    let mut names = Names::new();
    // Everything that can fail on the policy fails here, before anything attaches.
    let (policy, tables) = control::compile(&state, &mut names).await?;
    let counts = control::counts(&policy, &tables);
    state.counts = counts;
    let (mut instance, adopted) = attach(paths, cgroup, &tables, &mut state, preparing)?;
    drop(tables);
    release_free_memory();
    println!(
        "attached to cgroup {} as instance {}{}: {}",
        cgroup.path().display(),
        paths.name,
        if adopted { " (adopted from its pins)" } else { "" },
        summary(&policy, counts, args.audit),
    );
    std::io::stdout().flush().context("writing to stdout")?;
    notify_ready();
    let report = crate::timings::take_report();
    if args.timings {
        eprintln!("{report}");
    }

    let view = Arc::new(Mutex::new(PolicyView::new(paths, &policy)));
    drop(policy);
    release_free_memory();
    let mut events = match &args.events {
        Some(path) => Some((EventReader::new(instance.take_events()?)?, open_events(path)?)),
        None => None,
    };
    let metrics_task = match metrics_addr {
        Some(addr) => {
            let snapshot = snapshot_source(paths.clone(), Arc::clone(&view));
            let (bound, server) = metrics::serve(addr, snapshot)
                .await
                .with_context(|| format!("serving metrics on {addr}"))?;
            println!("serving metrics on http://{bound}/metrics");
            Some(tokio::spawn(server))
        }
        None => None,
    };
    loop {
        let refresh = names.next_refresh().map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
                        _ = hup.recv() => reload(paths, &mut names, "reloaded").await,
            () = sleep_until(refresh) => {
                if names.refresh().await {
                                        reload(paths, &mut names, "hostnames re-resolved").await;
                }
            }
                        result = next_events(&mut events, &view) => {
                if let Err(e) = result {
                    eprintln!("blocker: warning: writing events failed: {e:#}; no longer writing them");
                    events = None;
                }
            }
        }
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    let _lock = Lock::acquire(paths)?;
    if args.pin {
        state = control::load(paths)?;
        state.pid = None;
        state.save(paths)?;
        println!(
            "exiting; instance {} stays attached to {} (pinned)",
            paths.name,
            cgroup.path().display()
        );
    } else {
        drop(instance);
        loader::unpin(paths)?;
        pins::remove_dirs(paths)
            .with_context(|| format!("removing the folders of instance {}", paths.name))?;
        println!("detached from cgroup {}", cgroup.path().display());
    }
    Ok(())
}

/// Creates the instance, or adopts the pinned instance of the same name (its programs keep
/// enforcing while the new tables swap in), under the instance's lock; saves `state`.
fn attach(
    paths: &InstancePaths,
    cgroup: &CgroupDir,
    tables: &Tables,
    state: &mut State,
    preparing: Option<std::thread::JoinHandle<Result<Prepared, LoadError>>>,
) -> anyhow::Result<(Instance, bool)> {
    paths.create_dirs()?;
    let _lock = Lock::acquire(paths)?;
    let previous = State::load(paths)?;
    if let Some(prev) = previous.as_ref().filter(|p| p.process_alive()) {
        bail!(BusyError { name: paths.name.clone(), pid: prev.pid.unwrap_or_default() });
    }
    let found = if paths.has_pinned_links() {
        if let Some(prev) = &previous
            && prev.cgroup != cgroup.path()
        {
            bail!(ElsewhereError {
                name: paths.name.clone(),
                attached: prev.cgroup.clone(),
                wanted: cgroup.path().to_owned()
            });
        }
        let mut instance = Instance::open(paths)?;
        instance.swap(tables)?;
        instance.set_audit(state.audit)?;
        state.since = previous.as_ref().map_or(state.since, |p| p.since);
        (instance, true)
    } else {
        // Pins left by an unpinned instance that was killed: nothing enforces them.
        loader::unpin(paths)?;
        let prepared = match preparing {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("loading the BPF programs panicked"))??,
            // The pins went away while the policy compiled: load now.
            None => Prepared::load()?,
        };
        (Instance::create(paths, cgroup, tables, state.audit, state.pinned, prepared)?, false)
    };
    state.pid = Some(std::process::id());
    state.save(paths)?;
    Ok(found)
}

/// Re-reads the sources and swaps the tables; on failure the old policy stays in force.
async fn reload(paths: &InstancePaths, names: &mut Names, what: &str) {
    match control::apply(paths, names, |_| Ok(())).await {
        Ok((policy, counts)) => println!("{what}: {}", summary(&policy, counts, false)),
        Err(e) => eprintln!("blocker: error: {what} failed, the old policy stays in force: {e:#}"),
    }
    let _ = std::io::stdout().flush();
    release_free_memory();
}

type EventSink = Box<dyn std::io::Write + Send>;

fn open_events(path: &std::path::Path) -> anyhow::Result<EventSink> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the events file {}", path.display()))?;
    Ok(Box::new(std::io::LineWriter::new(file)))
}

async fn next_events(
    events: &mut Option<(EventReader, EventSink)>,
    view: &Mutex<PolicyView>,
) -> anyhow::Result<()> {
    let Some((reader, sink)) = events else { return std::future::pending().await };
    let mut result = Ok(());
    reader
        .next_batch(|e| {
            if result.is_ok() {
                let mut view = view.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                result = EventLine::new(e, &mut view).write(sink, true);
            }
        })
        .await?;
    sink.flush()?;
    Ok(result?)
}

fn snapshot_source(
    paths: InstancePaths,
    view: Arc<Mutex<PolicyView>>,
) -> Arc<dyn Fn() -> Snapshot + Send + Sync> {
    Arc::new(move || {
        let Ok(instance) = Instance::open(&paths) else { return Snapshot::default() };
        let totals = instance.totals().unwrap_or_default();
        let mut hits = instance.rule_hits().unwrap_or_default();
        hits.sort_unstable_by_key(|h| std::cmp::Reverse(h.1));
        hits.truncate(metrics::TOP_RULES);
        let mut view = view.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let top_rules = hits.into_iter().map(|(id, n)| (view.rule_text(id), n)).collect();
        let counts = control::load(&paths).map(|s| s.counts).unwrap_or_default();
        Snapshot { totals, top_rules, counts }
    })
}

/// Tells systemd (`Type=notify`) that the instance enforces, so units ordered after it start
/// only then. Does nothing outside systemd.
fn notify_ready() {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let bytes = socket.as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", &socket)
    };
    if let Err(e) = sent {
        eprintln!("blocker: warning: telling systemd we are ready failed: {e}");
    }
}

/// Gives the heap that parsing and compiling used back to the system: a long-running
/// instance keeps only its policy.
fn release_free_memory() {
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe { libc::malloc_trim(0) };
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `N rules (block 1.2.3.4, allow 10.0.0.0/8, ... and M more), ... default allow`.
#[must_use]
pub fn summary(policy: &Policy, counts: Counts, audit: bool) -> String {
    const SHOWN: usize = 5;
    let mut shown: Vec<String> =
        policy.rules.iter().take(SHOWN).map(|r| r.rule.to_string()).collect();
    if policy.rules.len() > SHOWN {
        shown.push(format!("and {} more", policy.rules.len() - SHOWN));
    }
    let default = match policy.default {
        Action::Allow => "allow",
        Action::Block => "deny",
    };
    format!(
        "{} rules ({}), {} IPv4 and {} IPv6 prefixes, default {default}{}",
        counts.rules,
        shown.join(", "),
        counts.ipv4,
        counts.ipv6,
        if audit { ", audit mode (nothing is blocked)" } else { "" }
    )
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
        Ok(args)
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
        let texts: Vec<String> = args.block.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["10.0.0.1", "127.0.0.2:80"]);
        assert_eq!(args.allow[0].to_string(), "udp://[::1]:53");
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
    fn invalid_rule_names_the_value() {
        let err = parse(&["--block-ip", "300.1.2.3"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("300.1.2.3"), "{err}");
    }
}
