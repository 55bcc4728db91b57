//! The `blocker` command line: one module per subcommand, each with its clap arguments and
//! one function that carries it out. `main()` only parses and dispatches.
//!
//! Exit codes (documented in the README):
//! - 0: success;
//! - 1: a runtime failure (the kernel refused a load or attach, a doctor check failed);
//! - 2: a usage error: a bad flag or value, such as an invalid address or cgroup directory;
//! - 3: this machine cannot run the blocker (safely): missing privileges or kernel support, or
//!   a pin or state folder that is a symbolic link or not root's.
use clap::{Parser, Subcommand};

use crate::{
    cgroup::CgroupError,
    events::{ReaderError, SinkError},
    instance::{BusyError, ElsewhereError, NotEnforcedError},
    loader::LoadError,
    metrics::AddrError,
    pins::PinError,
    policy::PolicyError,
    privileges::PrivilegeError,
    resolve::ResolveError,
    table::TableError,
    target::TargetError,
};

pub mod detach;
pub mod doctor;
pub mod edit;
pub mod events;
pub mod explain;
pub mod extras;
pub mod learn;
pub mod list;
pub mod reload;
pub mod run;
pub mod runtime;
pub mod stats;
pub mod status;

/// The exit codes every `--help` ends with: the README's "Exit codes" table, shorter.
macro_rules! exit_codes {
    () => {
        "
Exit codes:
  0  success (run: stopped by SIGINT or SIGTERM, and detached unless --pin)
  1  runtime failure: the kernel refused a load or attach; a doctor check failed
  2  usage error: a bad flag, rule, list line or policy file; a cgroup that is not a cgroup v2
     directory (or does not exist, without --wait-for-cgroup); a hostname that does not
     resolve; more rules than fit; no such instance, or one that is busy, attached elsewhere or
     no longer enforced; a rule to remove that is not there; an instance not in observe mode
     (learn); an --events or learn -o file that is a symbolic link
  3  this machine cannot run the blocker (safely): not uid 0 with CAP_BPF, CAP_NET_ADMIN and
     CAP_PERFMON; a kernel without cgroup BPF; a pin or state folder that is a symbolic link
     or not root's
"
    };
}

/// A verb's long help: its examples, then the exit codes.
macro_rules! help {
    ($($line:literal)+) => {
        concat!("Examples:\n", $("  ", $line, "\n",)+ exit_codes!())
    };
}

/// An outbound connection firewall for Linux cgroups.
#[derive(Debug, Parser)]
#[command(
    name = "blocker",
    version = env!("BLOCKER_VERSION"),
    about,
    after_long_help = help!(
        "sudo blocker doctor"
        "sudo blocker run --cgroup /sys/fs/cgroup/web.slice --block 192.0.2.0/24 --pin --name web"
        "sudo blocker status"
    )
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load, attach to a cgroup, enforce the rules, stay attached until SIGINT/SIGTERM.
    #[command(after_long_help = help!(
        "sudo blocker run --block 93.184.216.34                 # the whole machine"
        "sudo blocker run --cgroup /sys/fs/cgroup/web.slice --name web --pin \\"
        "    --default deny --allow 10.0.0.0/8 --allow udp://192.0.2.53:53 --block-list drop.txt"
        "sudo blocker run --name web --policy /etc/cgroup-connect/web.toml --watch --events -"
        "sudo blocker run --name web --unit nginx.service --block-list drop.txt   # waits if stopped"
        "sudo blocker run --name job --cgroup /sys/fs/cgroup/jobs.slice/job-7.scope --wait-for-cgroup"
        "sudo blocker run --name db --container postgres --default deny --allow 10.0.0.0/8"
        "sudo blocker run --name try --audit --block example.com:443   # report, block nothing"
    ))]
    Run(Box<run::RunArgs>),
    /// Add rules to a running or pinned instance, at once.
    #[command(after_long_help = help!(
        "sudo blocker add web 203.0.113.0/24 tcp://198.51.100.7:443"
        "sudo blocker add web --allow 10.1.2.3"
    ))]
    Add(edit::EditArgs),
    /// Remove rules from a running or pinned instance, at once.
    #[command(after_long_help = help!(
        "sudo blocker remove web 203.0.113.0/24"
        "sudo blocker remove web --allow 10.1.2.3"
    ))]
    Remove(edit::EditArgs),
    /// Show the rules an instance enforces, as recorded when they were put in force.
    #[command(after_long_help = help!(
        "sudo blocker list web"
        "sudo blocker list web --json"
    ))]
    List(list::ListArgs),
    /// Why a destination gets its verdict: the rule that decides and where it came from, the
    /// other rules for the address and why they lost; from an instance's tables as the kernel
    /// holds them, or from rule flags or a policy file before it is deployed. Exits 1 when the
    /// tables in force and the record of the rules disagree.
    #[command(after_long_help = help!(
        "sudo blocker explain web 192.0.2.7:443"
        "sudo blocker explain web '[2001:db8::1]:53' --proto udp --json"
        "blocker explain --policy /etc/cgroup-connect/web.toml 10.1.2.3:22   # no instance, no root"
        "blocker explain --default deny --allow 10.0.0.0/8 --block 10.1.0.0/16 10.1.2.3"
    ))]
    Explain(explain::ExplainArgs),
    /// Write a default-deny policy that allows what an instance in observe mode (`run
    /// --audit`) saw its workload reach: one rule per destination, port and protocol, with
    /// counts and first and last seen times.
    #[command(after_long_help = help!(
        "sudo blocker run --name web --cgroup /sys/fs/cgroup/web.slice --audit --pin"
        "sudo blocker learn web -o web.toml && sudo blocker run --name web --policy web.toml ..."
        "sudo blocker learn web --since 1h --aggregate /24"
    ))]
    Learn(learn::LearnArgs),
    /// Re-read an instance's policy files and swap its rules at once.
    #[command(after_long_help = help!(
        "sudo blocker reload web"
        "sudo systemctl reload cgroup-connect@web     # the same, through the unit (SIGHUP)"
    ))]
    Reload(reload::ReloadArgs),
    /// Remove an instance and its pins (stops its process).
    #[command(after_long_help = help!(
        "sudo blocker detach web"
    ))]
    Detach(detach::DetachArgs),
    /// List every instance.
    #[command(after_long_help = help!(
        "sudo blocker status"
        "sudo blocker status --json"
    ))]
    Status(status::StatusArgs),
    /// Stream an instance's events (blocked attempts); one reader at a time.
    #[command(after_long_help = help!(
        "sudo blocker events web"
        "sudo blocker events web --json"
    ))]
    Events(events::EventsArgs),
    /// Show an instance's counters (hits of a rule kept while it stays in force).
    #[command(after_long_help = help!(
        "sudo blocker stats web"
        "sudo blocker stats web --json"
    ))]
    Stats(stats::StatsArgs),
    /// Check that this machine can run (and build) the blocker.
    #[command(after_long_help = help!(
        "sudo blocker doctor"
        "sudo blocker doctor --verifier-log verifier.txt"
    ))]
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish) to standard output.
    #[command(hide = true, after_long_help = help!(
        "blocker completions bash > /usr/share/bash-completion/completions/blocker"
        "./scripts/install-extras.sh                  # completions and man pages"
    ))]
    Completions(extras::CompletionsArgs),
    /// Write the man pages (blocker.1 and one per verb) to a folder.
    #[command(hide = true, after_long_help = help!(
        "blocker manpages target/man && man -l target/man/blocker.1"
    ))]
    Manpages(extras::ManpagesArgs),
}

/// Carries out the parsed command.
///
/// # Errors
/// Whatever the subcommand fails with; [`exit_code`] maps it to the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    // Every verb but these two reads the pins and maps, which need the privileges: without
    // them, say so (exit 3) rather than "no instance" or a bare EACCES. `run` checks once
    // its arguments are read (a bad flag is a usage error on any machine); `doctor` reports;
    // `explain` checks only for an instance (a policy file needs no privileges).
    if !matches!(
        cli.command,
        Command::Run(_)
            | Command::Doctor(_)
            | Command::Explain(_)
            | Command::Completions(_)
            | Command::Manpages(_)
    ) {
        crate::privileges::check()?;
    }
    match cli.command {
        Command::Run(args) => run::run(&args),
        Command::Add(args) => edit::add(&args),
        Command::Remove(args) => edit::remove(&args),
        Command::List(args) => list::list(&args),
        Command::Explain(args) => explain::explain(&args),
        Command::Learn(args) => learn::learn(&args),
        Command::Reload(args) => reload::reload(&args),
        Command::Detach(args) => detach::detach(&args),
        Command::Status(args) => status::status(&args),
        Command::Events(args) => events::events(&args),
        Command::Stats(args) => stats::stats(&args),
        Command::Doctor(args) => doctor::doctor(&args),
        Command::Completions(args) => extras::completions(&args),
        Command::Manpages(args) => extras::manpages(&args),
    }
}

/// Exit code for a usage error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a machine that cannot run the blocker.
pub const EXIT_UNSUPPORTED: u8 = 3;

/// The process exit code for a failed command: see the module docs.
#[must_use]
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<CgroupError>()
            || cause.is::<TargetError>()
            || cause.is::<PolicyError>()
            || cause.is::<ResolveError>()
            || cause.is::<TableError>()
            || cause.is::<AddrError>()
            || matches!(
                cause.downcast_ref(),
                Some(PinError::Name { .. } | PinError::NoInstance { .. })
            )
            || cause.is::<edit::NotFoundError>()
            || cause.is::<explain::UsageError>()
            || matches!(
                cause.downcast_ref(),
                Some(
                    learn::LearnError::NotObserving { .. }
                        | learn::LearnError::NoObserveMap { .. }
                        | learn::LearnError::Symlink { .. }
                )
            )
            || cause.is::<BusyError>()
            || cause.is::<ElsewhereError>()
            || cause.is::<NotEnforcedError>()
            || matches!(cause.downcast_ref(), Some(SinkError::Symlink { .. }))
            || matches!(cause.downcast_ref(), Some(run::WatchError::NoFile))
            || cause.is::<run::DnsPortError>()
            || matches!(cause.downcast_ref(), Some(ReaderError::Busy { .. }))
        {
            return EXIT_USAGE;
        }
        if cause.is::<PrivilegeError>()
            || matches!(cause.downcast_ref(), Some(LoadError::Unsupported { .. }))
            || matches!(cause.downcast_ref(), Some(PinError::Unsafe { .. }))
        {
            return EXIT_UNSUPPORTED;
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn every_verb_help_has_examples_and_exit_codes() {
        use clap::CommandFactory as _;
        let mut cli = Cli::command();
        let root = cli.render_long_help().to_string();
        assert!(root.contains("Examples:") && root.contains("Exit codes:"), "{root}");
        for sub in cli.get_subcommands_mut().filter(|s| s.get_name() != "help") {
            let help = sub.render_long_help().to_string();
            let name = sub.get_name().to_owned();
            assert!(help.contains("Examples:\n  "), "{name}: {help}");
            assert!(help.contains(&format!("blocker {name}")), "{name}: {help}");
            for code in ["  0  ", "  1  ", "  2  ", "  3  "] {
                assert!(help.contains(code), "{name}: no exit code {code:?}: {help}");
            }
        }
    }

    #[test]
    fn the_version_names_the_commit() {
        use clap::CommandFactory as _;
        let version = Cli::command().render_version();
        assert!(version.starts_with(&format!("blocker {} (commit ", env!("CARGO_PKG_VERSION"))));
        let head = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output();
        match head {
            Ok(out) if out.status.success() => {
                let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                assert!(version.contains(&format!("(commit {commit})")), "{version} vs {commit}");
            }
            _ => assert!(version.contains("(commit "), "{version}"),
        }
    }

    #[test]
    fn exit_codes_follow_the_error_kind() {
        let usage = anyhow::Error::from(CgroupError::NotFound { path: PathBuf::from("/x") });
        assert_eq!(exit_code(&usage), EXIT_USAGE);
        let privilege = anyhow::Error::from(PrivilegeError::Missing { missing: "CAP_BPF".into() });
        assert_eq!(exit_code(&privilege), EXIT_UNSUPPORTED);
        let unsupported = LoadError::Unsupported { feature: &crate::features::RING_BUFFER };
        let kernel = anyhow::Error::from(unsupported).context("starting");
        assert_eq!(exit_code(&kernel), EXIT_UNSUPPORTED);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), 1);
    }

    #[test]
    fn unsupported_kernel_message_says_what_is_needed() {
        let msg = LoadError::Unsupported { feature: &crate::features::SOCK_ADDR }.to_string();
        assert!(
            msg.contains("sock_addr") && msg.contains("4.17") && msg.contains("CONFIG_CGROUP_BPF"),
            "{msg}"
        );
        let msg = LoadError::Unsupported { feature: &crate::features::RING_BUFFER }.to_string();
        assert!(msg.contains("ring buffers") && msg.contains("5.8"), "{msg}");
        assert!(msg.contains("blocker doctor"), "{msg}");
    }
}
