//! `blocker run`: read the policy, resolve hostnames, compile the tables, load, attach, stay
//! attached (re-resolving hostnames as their records expire) until SIGINT or SIGTERM, detach.
use std::{io::Write as _, path::PathBuf};

use anyhow::Context as _;

use crate::{
    cgroup::{self, CgroupDir},
    loader::Instance,
    policy::{Policy, Sources},
    privileges,
    resolve::Names,
    rules::{Action, Destination},
    table::{self, Tables},
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
    /// TOML policy file (default, [[rule]] and [[list]] entries)
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

/// Runs until SIGINT or SIGTERM; returns after detaching.
///
/// # Errors
/// A bad cgroup directory, rule or policy file, an unresolvable hostname, missing privileges,
/// or a load or attach failure; nothing stays attached after an error.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let cgroup = match &args.cgroup {
        Some(dir) => CgroupDir::open(dir)?,
        None => CgroupDir::open(cgroup::cgroup2_root()?)?,
    };
    let policy = Policy::load(&args.sources())?;
    privileges::check()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(&cgroup, &policy))
}

async fn run_async(cgroup: &CgroupDir, policy: &Policy) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut names = Names::resolve(policy.names()).await?;
    let tables = compile(policy, &names)?;
    let mut instance = Instance::start(cgroup, &tables)?;
    println!("attached to cgroup {}: {}", cgroup.path().display(), summary(policy, &tables));
    std::io::stdout().flush().context("writing to stdout")?;
    drop(tables);
    release_free_memory();
    loop {
        let refresh = names.next_refresh().map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            () = sleep_until(refresh) => {
                if names.refresh().await {
                    // A table that cannot be built or written leaves the old one in force.
                    match compile(policy, &names).and_then(|t| instance.swap(&t).map_err(Into::into)) {
                        Ok(()) => println!("hostnames re-resolved: tables updated"),
                                                Err(e) => eprintln!("blocker: warning: updating hostname addresses failed: {e:#}"),
                    }
                    release_free_memory();
                }
            }
        }
    }
    drop(instance);
    println!("detached from cgroup {}", cgroup.path().display());
    Ok(())
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

fn compile(policy: &Policy, names: &Names) -> anyhow::Result<Tables> {
    Ok(table::compile(policy.default, policy.table_rules(|name| names.addrs(name)))?)
}

/// `N rules (block 1.2.3.4, allow 10.0.0.0/8, ... and M more), default allow`.
fn summary(policy: &Policy, tables: &Tables) -> String {
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
        "{} rules ({}), {} IPv4 and {} IPv6 prefixes, default {default}",
        policy.rules.len(),
        shown.join(", "),
        tables.v4_rules,
        tables.v6_rules
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
