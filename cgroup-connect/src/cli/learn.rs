//! `blocker learn`: writes a default-deny policy that allows what an instance in observe mode
//! (`blocker run --audit`) saw its workload reach ([`crate::learn`]).
use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use crate::{
    events::{open_private, wall_time},
    learn::{AGGREGATE_MIN, Learn, Seen, learn as learn_rules, policy_text},
    loader::{Instance, LoadError},
    pins::InstancePaths,
    record,
    state::Lock,
};

/// Arguments of `blocker learn`.
#[derive(Debug, clap::Args)]
pub struct LearnArgs {
    /// The instance: one run with --audit (observe mode)
    pub name: String,
    /// Only destinations last seen within this long (30s, 10m, 2h, 1d)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Write the policy to FILE (made with mode 0600; a symbolic link is refused) instead of
    /// standard output
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Write one prefix rule for the IPv4 addresses of a /N (e.g. /24) reached on the same
    /// port and protocol, when there are at least --aggregate-min of them
    #[arg(long, value_name = "/N", value_parser = prefix_len::<32>)]
    pub aggregate: Option<u8>,
    /// The same for IPv6 addresses (e.g. /64)
    #[arg(long, value_name = "/N", value_parser = prefix_len::<128>)]
    pub aggregate6: Option<u8>,
    /// Addresses of one prefix it takes for --aggregate to write the prefix
    #[arg(long, value_name = "N", default_value_t = AGGREGATE_MIN,
          value_parser = clap::builder::TypedValueParser::map(
              clap::value_parser!(u16).range(1..), usize::from))]
    pub aggregate_min: usize,
}

/// Parses `/N` (or `N`) up to `MAX`.
fn prefix_len<const MAX: u8>(text: &str) -> Result<u8, String> {
    let digits = text.strip_prefix('/').unwrap_or(text);
    match digits.parse::<u8>() {
        Ok(n) if n <= MAX => Ok(n),
        _ => Err(format!("{text:?} is not a prefix length: write /0 to /{MAX}, as /24")),
    }
}

/// Why an instance has nothing to learn from.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error(
        "instance {name} is not in observe mode: start it with `blocker run --audit ...` (it \
         records what the workload reaches only then)"
    )]
    NotObserving { name: String },
    #[error(
        "instance {name} has no observe map (started by an older version): detach it and start \
         it again with `blocker run --audit`"
    )]
    NoObserveMap { name: String },
    #[error("{} is a symbolic link: refusing to write through it", path.display())]
    Symlink { path: PathBuf },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Learns the policy and writes it.
///
/// # Errors
/// No such instance, one not in observe mode (exit 2), a map that does not read, or an output
/// file that is a symbolic link (2) or cannot be written.
pub fn learn(args: &LearnArgs) -> anyhow::Result<()> {
    let paths = InstancePaths::new(&args.name)?;
    let state = crate::instance::load(&paths)?;
    let lock = Lock::acquire(&paths)?;
    let instance = Instance::open(&paths)?;
    if !instance.audit()? {
        anyhow::bail!(LearnError::NotObserving { name: args.name.clone() });
    }
    let observed = match instance.observed() {
        Err(LoadError::Missing { .. }) => {
            anyhow::bail!(LearnError::NoObserveMap { name: args.name.clone() })
        }
        other => other?,
    };
    let recorded = record::read(&paths)?;
    drop(lock);
    let seen: Vec<Seen> = observed.entries.iter().map(|(k, v)| Seen::of(k, v, wall_time)).collect();
    let how = Learn {
        since: args.since.map(|d| SystemTime::now() - d),
        aggregate_v4: args.aggregate,
        aggregate_v6: args.aggregate6,
        aggregate_min: args.aggregate_min,
    };
    let rules = learn_rules(&seen, &recorded, &how);
    let mut notes = vec![format!(
        "{} destinations observed (map of {}), {} rules; {} evicted, {} decisions not recorded",
        observed.entries.len(),
        observed.capacity,
        rules.len(),
        observed.evicted(),
        observed.lost
    )];
    if observed.evicted() > 0 || observed.lost > 0 {
        notes.push(
            "some destinations were not kept: run with a larger --observe-capacity".to_owned(),
        );
    }
    if let Some(d) = args.since {
        notes.push(format!("only destinations seen in the last {}", humantime::format_duration(d)));
    }
    let text = policy_text(&args.name, &rules, &state.nat64, &notes);
    match &args.output {
        Some(path) => write_private(path, &text)?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    if observed.evicted() > 0 || observed.lost > 0 {
        tracing::warn!(
            "instance {}: {} destinations evicted, {} decisions not recorded: the policy may \
             miss some (run with a larger --observe-capacity)",
            args.name,
            observed.evicted(),
            observed.lost
        );
    }
    Ok(())
}

/// Writes `text` to `path`, mode 0600, never through a symbolic link.
fn write_private(path: &Path, text: &str) -> Result<(), LearnError> {
    let err = |source| LearnError::Write { path: path.to_owned(), source };
    let mut file = open_private(path, std::fs::OpenOptions::new().write(true).truncate(true))
        .map_err(|e| e.map_or_else(|| LearnError::Symlink { path: path.to_owned() }, err))?;
    // A file that was there keeps its mode through open: made private too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}
