//! `blocker stats`: decision totals by verdict and hits of the busiest rules. The JSON form is
//! described by docs/schemas/stats.schema.json.
use serde::Serialize;

use crate::{
    loader::{Instance, Totals},
    pins::InstancePaths,
    view::PolicyView,
};

/// Rules listed by hits.
const TOP: usize = 20;

/// Arguments of `blocker stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// The instance
    pub name: String,
    /// JSON instead of text (described by docs/schemas/stats.schema.json)
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Stats {
    #[serde(flatten)]
    totals: Totals,
    rules: Vec<RuleHits>,
}

#[derive(Serialize)]
struct RuleHits {
    id: u32,
    rule: String,
    hits: u64,
}

/// Prints the counters.
///
/// # Errors
/// No such instance.
pub fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let paths = InstancePaths::new(&args.name)?;
    crate::instance::load(&paths)?;
    let mut view = PolicyView::open(&paths);
    let instance = Instance::open(&paths)?;
    let rules = view
        .busiest_rules(&instance, TOP)?
        .into_iter()
        .map(|(id, rule, hits)| RuleHits { id, rule, hits })
        .collect();
    let stats = Stats { totals: instance.totals()?, rules };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    let t = &stats.totals;
    println!(
        "instance {}: {} blocked, {} allowed, {} audit would-block, {} events lost, {} failed closed",
        paths.name, t.blocked, t.allowed, t.audit_would_block, t.events_lost, t.failed_closed
    );
    for r in &stats.rules {
        println!("{:>12}  #{} {}", r.hits, r.id, r.rule);
    }
    Ok(())
}
