//! `blocker detach`: remove an instance, its pins and its state; stops its process if one
//! serves it.
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::{
    loader,
    pins::{self, InstancePaths, PinError},
    state::{Lock, State},
};

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
    if !paths.exists() {
        return Err(PinError::NoInstance { name: paths.name }.into());
    }
    let state = State::load(&paths).ok().flatten();
    if let Some(pid) = state.as_ref().filter(|s| s.process_alive()).and_then(|s| s.pid) {
        stop(pid)?;
    }
    let _lock = if paths.state.exists() { Some(Lock::acquire(&paths)?) } else { None };
    loader::unpin(&paths)?;
    pins::remove_dirs(&paths)
        .with_context(|| format!("removing the folders of instance {}", paths.name))?;
    println!("detached instance {}", paths.name);
    Ok(())
}

/// SIGTERM, then up to 10 s for the process to exit.
fn stop(pid: u32) -> anyhow::Result<()> {
    let pid_t = i32::try_from(pid).context("pid out of range")?;
    // SAFETY: a signal to a process we checked runs this program.
    unsafe { libc::kill(pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::state::process_alive(pid) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "process {pid} did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
