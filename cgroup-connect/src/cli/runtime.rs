//! What the long-running verbs share: one way to build the tokio runtime and one set of
//! signal handlers.
use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Runs a future on a current-thread runtime of its own (hostname resolution, events and
/// metrics need one).
///
/// # Errors
/// The runtime cannot start, or whatever the future fails with.
pub fn block_on<T>(f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(f);
    // Work left on a blocking thread (a parse that a signal cut short) ends with the process.
    runtime.shutdown_background();
    result
}

/// What a caught signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGINT or SIGTERM.
    Stop,
    /// SIGHUP.
    Reload,
}

/// SIGINT and SIGTERM, and SIGHUP if asked for, caught from creation on (create it inside
/// the runtime). Without it SIGHUP keeps its default action.
pub struct Signals {
    int: Signal,
    term: Signal,
    hup: Option<Signal>,
}

impl Signals {
    /// Installs the handlers.
    ///
    /// # Errors
    /// A handler cannot be installed.
    pub fn new(reload: bool) -> anyhow::Result<Self> {
        let install =
            |kind, name| signal(kind).with_context(|| format!("installing the {name} handler"));
        Ok(Self {
            int: install(SignalKind::interrupt(), "SIGINT")?,
            term: install(SignalKind::terminate(), "SIGTERM")?,
            hup: if reload { Some(install(SignalKind::hangup(), "SIGHUP")?) } else { None },
        })
    }

    /// Resolves at the next signal.
    pub async fn next(&mut self) -> Request {
        let hup = async {
            match &mut self.hup {
                Some(hup) => hup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.int.recv() => Request::Stop,
            _ = self.term.recv() => Request::Stop,
            _ = hup => Request::Reload,
        }
    }
}
