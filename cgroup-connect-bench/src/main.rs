//! `cgroup-connect-bench [--quick|--smoke] [--out FILE]`: runs the benchmarks, prints the
//! table, writes the figures as JSON. Needs root; `scripts/bench.sh` installs what it uses.
use std::path::PathBuf;

use anyhow::Context as _;
use cgroup_connect_bench::{Config, render, run};
use clap::Parser;

/// Benchmarks of the blocker against no filter, nftables, ipset and iptables.
#[derive(Parser)]
struct Args {
    /// Under two minutes: fewer rounds, smaller sets
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// One round with tiny sizes (what CI runs)
    #[arg(long)]
    smoke: bool,
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
    let report = run(&cfg, &mut |line| eprintln!("bench: {line}"))?;
    print!("{}", render(&report));
    if let Some(out) = args.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("bench: figures written to {}", out.display());
    }
    Ok(())
}
