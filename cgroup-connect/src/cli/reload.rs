//! `blocker reload`: re-read an instance's policy sources and swap its tables at once; a bad
//! source is refused and the old policy stays in force. `blocker run` does the same on SIGHUP.
use crate::{cli::runtime::block_on, instance, pins::InstancePaths, resolve::Names};

/// Arguments of `blocker reload`.
#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    /// The instance
    pub name: String,
    /// Print how long each phase took (read, compile, write) to stderr
    #[arg(long)]
    pub timings: bool,
}

/// Reloads.
///
/// # Errors
/// No such instance, or a bad source (the old policy stays).
pub fn reload(args: &ReloadArgs) -> anyhow::Result<()> {
    let paths = InstancePaths::new(&args.name)?;
    let applied = block_on(instance::apply(&paths, &mut Names::new(), |state| {
        state.reloads.reloaded();
        Ok(())
    }))
    .inspect_err(|_| instance::count_failed_reload(&paths))?;
    println!("reloaded instance {}: {}", paths.name, applied.summary(false));
    let report = crate::timings::take_report();
    if args.timings {
        eprintln!("{report}");
    }
    Ok(())
}
