//! cgroup-connect: an outbound connection firewall for Linux cgroups.
//!
//! The `blocker` binary is a thin shell over this library: [`cli`] holds one module per
//! subcommand; [`loader`] is the only code that touches aya; [`cgroup`] finds and validates
//! cgroup v2 directories; [`privileges`] checks capabilities up front.
pub mod cgroup;
pub mod cli;
pub mod control;
pub mod events;
pub mod loader;
pub mod metrics;
pub mod pins;
pub mod policy;
pub mod privileges;
pub mod resolve;
pub mod rules;
pub mod state;
pub mod table;
pub mod timings;
