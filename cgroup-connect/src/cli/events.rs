//! `blocker events`: stream an instance's events (blocked attempts, audit would-be blocks) as
//! text or JSON lines until SIGINT. One reader at a time: readers share the ring buffer.
use std::io::Write as _;

use anyhow::Context as _;

use crate::{
    control::{self, PolicyView},
    events::{EventLine, EventReader},
    loader::Instance,
    pins::InstancePaths,
};

/// Arguments of `blocker events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// The instance
    pub name: String,
    /// JSON lines instead of text
    #[arg(long)]
    pub json: bool,
}

/// Streams events until SIGINT or SIGTERM.
///
/// # Errors
/// No such instance, or standard output fails.
pub fn events(args: &EventsArgs) -> anyhow::Result<()> {
    let paths = InstancePaths::new(&args.name)?;
    let mut view = PolicyView::new(&paths, &control::load(&paths)?.policy()?);
    let mut instance = Instance::open(&paths)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut reader = EventReader::new(instance.take_events()?)?;
        let mut out = std::io::stdout().lock();
        loop {
            let mut batch = Vec::new();
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                r = reader.next_batch(|e| batch.push(*e)) => r?,
            }
            for e in &batch {
                EventLine::new(e, &mut view)
                    .write(&mut out, args.json)
                    .context("writing events")?;
            }
            out.flush()?;
        }
        Ok(())
    })
}
