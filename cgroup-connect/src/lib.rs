//! cgroup-connect: an outbound connection firewall for Linux cgroups.
//!
//! The `blocker` binary is a thin shell over this library: [`cli`] holds one module per
//! subcommand. [`instance`] owns an instance's lifecycle (start, every change, stop, detach);
//! [`loader`] is the only code that loads and attaches through aya; [`rules`] and [`policy`]
//! own the rule language and its sources, [`table`] compiles rules into the tables the
//! programs search; [`explain`] and [`learn`] answer why a verdict, and what to allow;
//! [`state`], [`record`] (the rules in force) and [`pins`] own what an instance keeps on disk; [`cgroup`]
//! finds and validates cgroup v2 directories; [`privileges`] checks capabilities up front, and
//! [`features`] probes the kernel for what the blocker needs; [`quote`] cuts and escapes
//! outside text that messages and event lines show.
mod btf;
pub mod cgroup;
pub mod cli;
pub mod dns;
pub mod events;
pub mod explain;
pub mod features;
pub mod instance;
pub mod learn;
pub mod learned;
pub mod loader;
pub mod logging;
pub mod metrics;
pub mod pins;
pub mod policy;
pub mod privileges;
pub mod quote;
pub mod record;
pub mod resolve;
pub mod rules;
pub mod state;
pub mod systemd;
pub mod table;
pub mod target;
pub mod timings;
pub mod view;
pub mod watch;
