//! `blocker detach`: remove an instance, its pins and its state; stops its process if one
//! serves it.
use crate::{instance, pins::InstancePaths};

/// Arguments of `blocker detach`.
#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// The instance
    pub name: String,
}

/// Detaches.
///
/// # Errors
/// No such instance, or a pin that cannot be removed.
pub fn detach(args: &DetachArgs) -> anyhow::Result<()> {
    let paths = InstancePaths::new(&args.name)?;
    instance::detach(&paths)?;
    println!("detached instance {}", paths.name);
    Ok(())
}
