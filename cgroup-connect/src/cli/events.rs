//! `blocker events`: stream an instance's events (blocked attempts, audit would-be blocks) as
//! text or JSON lines until SIGINT. One reader at a time: each event goes to one reader, so a
//! second reader (or `blocker run --events`) is refused ([`ReaderClaim`]).
use anyhow::Context as _;

use crate::{
    cli::runtime::{Signals, block_on},
    events::{self, EventReader, ReaderClaim},
    instance,
    loader::Instance,
    pins::InstancePaths,
    view::PolicyView,
};

/// Arguments of `blocker events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// The instance
    pub name: String,
    /// JSON lines instead of text (each described by docs/schemas/event.schema.json)
    #[arg(long)]
    pub json: bool,
}

/// Streams events until SIGINT or SIGTERM.
///
/// # Errors
/// No such instance, another reader ([`events::ReaderError::Busy`]), or standard output
/// fails.
pub fn events(args: &EventsArgs) -> anyhow::Result<()> {
    let paths = InstancePaths::new(&args.name)?;
    paths.check_dirs()?;
    instance::load(&paths)?;
    let _claim = ReaderClaim::take(&paths, "blocker events")?;
    let mut view = PolicyView::open(&paths);
    let mut instance = Instance::open(&paths)?;
    block_on(async {
        let mut signals = Signals::new(false)?;
        let mut reader = EventReader::new(instance.take_events()?)?;
        let mut out = std::io::stdout().lock();
        loop {
            let batch = tokio::select! {
                _ = signals.next() => break,
                batch = reader.next_batch() => batch?,
            };
            events::write_batch(&batch, &mut view, &mut out, args.json)
                .context("writing events")?;
        }
        Ok(())
    })
}
