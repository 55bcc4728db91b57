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
pub mod list;
pub mod reload;
pub mod run;
pub mod runtime;
pub mod stats;
pub mod status;

/// An outbound connection firewall for Linux cgroups.
#[derive(Debug, Parser)]
#[command(name = "blocker", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load, attach to a cgroup, enforce the rules, stay attached until SIGINT/SIGTERM.
    Run(Box<run::RunArgs>),
    /// Add rules to a running or pinned instance, at once.
    Add(edit::EditArgs),
    /// Remove rules from a running or pinned instance, at once.
    Remove(edit::EditArgs),
    /// Show the rules an instance enforces, as recorded when they were put in force.
    List(list::ListArgs),
    /// Re-read an instance's policy files and swap its rules at once.
    Reload(reload::ReloadArgs),
    /// Remove an instance and its pins (stops its process).
    Detach(detach::DetachArgs),
    /// List every instance.
    Status(status::StatusArgs),
    /// Stream an instance's events (blocked attempts); one reader at a time.
    Events(events::EventsArgs),
    /// Show an instance's counters (hits of a rule kept while it stays in force).
    Stats(stats::StatsArgs),
    /// Check that this machine can run (and build) the blocker.
    Doctor,
}

/// Carries out the parsed command.
///
/// # Errors
/// Whatever the subcommand fails with; [`exit_code`] maps it to the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    // Every verb but these two reads the pins and maps, which need the privileges: without
    // them, say so (exit 3) rather than "no instance" or a bare EACCES. `run` checks once
    // its arguments are read (a bad flag is a usage error on any machine); `doctor` reports.
    if !matches!(cli.command, Command::Run(_) | Command::Doctor) {
        crate::privileges::check()?;
    }
    match cli.command {
        Command::Run(args) => run::run(&args),
        Command::Add(args) => edit::add(&args),
        Command::Remove(args) => edit::remove(&args),
        Command::List(args) => list::list(&args),
        Command::Reload(args) => reload::reload(&args),
        Command::Detach(args) => detach::detach(&args),
        Command::Status(args) => status::status(&args),
        Command::Events(args) => events::events(&args),
        Command::Stats(args) => stats::stats(&args),
        Command::Doctor => doctor::doctor(),
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
            || cause.is::<BusyError>()
            || cause.is::<ElsewhereError>()
            || cause.is::<NotEnforcedError>()
            || matches!(cause.downcast_ref(), Some(SinkError::Symlink { .. }))
            || matches!(cause.downcast_ref(), Some(run::WatchError::NoFile))
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
    fn exit_codes_follow_the_error_kind() {
        let usage = anyhow::Error::from(CgroupError::NotFound { path: PathBuf::from("/x") });
        assert_eq!(exit_code(&usage), EXIT_USAGE);
        let privilege = anyhow::Error::from(PrivilegeError { missing: "CAP_BPF".into() });
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
