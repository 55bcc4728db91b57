//! `blocker add` and `blocker remove`: change a running or pinned instance's rules at once.
//! The change is a live edit: it survives reloads until undone (see `state`).
use anyhow::bail;

use crate::{
    cli::runtime::block_on,
    instance,
    pins::InstancePaths,
    resolve::Names,
    rules::{Action, Destination, Rule},
    state::LiveRule,
};

/// Arguments of `blocker add` and `blocker remove`.
#[derive(Debug, clap::Args)]
pub struct EditArgs {
    /// The instance
    pub name: String,
    /// Rules ([tcp://|udp://]HOST[/LEN][:PORT[-PORT]])
    #[arg(required = true, value_name = "RULE")]
    pub rules: Vec<Destination>,
    /// The rules allow (default: they block)
    #[arg(long)]
    pub allow: bool,
}

impl EditArgs {
    fn live_rules(&self) -> Vec<LiveRule> {
        let action = if self.allow { Action::Allow } else { Action::Block };
        self.rules.iter().map(|dest| LiveRule::of(&Rule { action, dest: dest.clone() })).collect()
    }
}

/// A rule to remove is not in the instance.
#[derive(Debug, thiserror::Error)]
#[error("instance {name} has no rule \"{rule}\": `blocker list {name}` shows its rules")]
pub struct NotFoundError {
    pub name: String,
    pub rule: String,
}

/// Adds rules.
///
/// # Errors
/// No such instance, a hostname that does not resolve, or a capacity limit; nothing changes.
pub fn add(args: &EditArgs) -> anyhow::Result<()> {
    let paths = InstancePaths::new(&args.name)?;
    let rules = args.live_rules();
    let applied = block_on(instance::apply(&paths, &mut Names::new(), |state| {
        for rule in rules {
            state.removed.retain(|r| *r != rule);
            if !state.added.contains(&rule) {
                state.added.push(rule);
            }
        }
        Ok(())
    }))?;
    println!("instance {}: {} rules", paths.name, applied.counts.rules);
    Ok(())
}

/// Removes rules, whether they came from a source or were added live.
///
/// # Errors
/// No such instance, or a rule it does not have; nothing changes.
pub fn remove(args: &EditArgs) -> anyhow::Result<()> {
    let paths = InstancePaths::new(&args.name)?;
    let rules = args.live_rules();
    let applied = block_on(instance::apply(&paths, &mut Names::new(), |state| {
        let policy = state.policy()?;
        for rule in rules {
            if let Some(i) = state.added.iter().position(|r| *r == rule) {
                state.added.remove(i);
            } else if policy.rules.iter().any(|r| LiveRule::of(&r.rule) == rule) {
                state.removed.push(rule);
            } else {
                bail!(NotFoundError {
                    name: state.name.clone(),
                    rule: format!("{} {}", rule.action, rule.rule)
                });
            }
        }
        Ok(())
    }))?;
    println!("instance {}: {} rules", paths.name, applied.counts.rules);
    Ok(())
}
