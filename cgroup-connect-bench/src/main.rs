//! `cgroup-connect-bench [--quick|--smoke] [--packets-only|--starts-only|--events-only|--decisions-only] [--out FILE]`: runs the
//! benchmarks, prints the table, writes the figures as JSON. Needs root; `scripts/bench.sh`
//! installs what it uses.
use std::path::PathBuf;

use anyhow::Context as _;
use cgroup_connect_bench::{
    Config, decisions, packets, render, render_events, render_packets, render_starts, run, starts,
    wakeups,
};
use clap::Parser;

/// Benchmarks of the blocker against no filter, nftables, ipset and iptables.
#[derive(Parser)]
#[expect(clippy::struct_excessive_bools, reason = "command-line switches")]
struct Args {
    /// Under three minutes: fewer rounds, smaller sets
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// One round with tiny sizes (what CI runs)
    #[arg(long)]
    smoke: bool,
    /// Only the cost of the packet checks; with --out, its section replaces the one in FILE
    /// and every other figure there stays
    #[arg(long, conflicts_with_all = ["starts_only", "events_only", "decisions_only"])]
    packets_only: bool,
    /// Only the start on a policy file against a list; with --out, its section replaces the
    /// one in FILE and every other figure there stays
    #[arg(long, conflicts_with_all = ["events_only", "decisions_only"])]
    starts_only: bool,
    /// Only the cost of an events reader; likewise its own section of FILE
    #[arg(long, conflicts_with = "decisions_only")]
    events_only: bool,
    /// Only the decision workloads against the reference programs, with the blocker's memory
    /// and start on real-list rules; likewise its own section of FILE
    #[arg(long)]
    decisions_only: bool,
    /// Write the figures as JSON here
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The blocker binary [default: next to this one]
    #[arg(long, value_name = "PATH")]
    blocker: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let blocker = match args.blocker {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("blocker"),
    };
    let cfg = if args.smoke {
        Config::smoke(blocker)
    } else if args.quick {
        Config::quick(blocker)
    } else {
        Config::full(blocker)
    };
    let json = if args.packets_only || args.starts_only || args.events_only || args.decisions_only {
        let (name, section) = if args.packets_only {
            let report = packets::run(&cfg, &mut |line| eprintln!("bench: {line}"))?;
            print!("{}", render_packets(&report));
            ("packets", serde_json::to_value(&report)?)
        } else if args.starts_only {
            let report = starts::run(&cfg, &mut |line| eprintln!("bench: {line}"))?;
            print!("{}", render_starts(&report));
            ("starts", serde_json::to_value(&report)?)
        } else if args.decisions_only {
            let report = decisions::run(&cfg, &mut |line| eprintln!("bench: {line}"))?;
            print!("{}", decisions::render(&report));
            ("decisions", serde_json::to_value(&report)?)
        } else {
            let report = wakeups::run(&cfg, &mut |line| eprintln!("bench: {line}"))?;
            print!("{}", render_events(&report));
            ("events", serde_json::to_value(&report)?)
        };
        let mut all = match &args.out {
            Some(out) if out.exists() => serde_json::from_str(
                &std::fs::read_to_string(out)
                    .with_context(|| format!("reading {}", out.display()))?,
            )
            .with_context(|| format!("parsing {}", out.display()))?,
            _ => serde_json::json!({}),
        };
        let sections = all.as_object_mut().context("the figures file holds no JSON object")?;
        sections.insert(name.to_owned(), section);
        all
    } else {
        let report = run(&cfg, &mut |line| eprintln!("bench: {line}"))?;
        print!("{}", render(&report));
        serde_json::to_value(&report)?
    };
    if let Some(out) = args.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&out, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("bench: figures written to {}", out.display());
    }
    Ok(())
}
