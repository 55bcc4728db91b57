//! systemd integration for `Type=notify` units, through the sd-notify crate: the service
//! manager learns when the instance enforces (`READY=1`), when it re-reads its policy
//! (`RELOADING=1` with `MONOTONIC_USEC`, then `READY=1`), when it stops (`STOPPING=1`), and
//! what it enforces (`STATUS=`, shown by `systemctl status`). Outside systemd (no
//! `NOTIFY_SOCKET`) every call does nothing. A failed notice is logged, never fatal: the
//! instance enforces whether or not systemd heard of it.
use sd_notify::NotifyState;

/// The instance enforces: units ordered after it may start. `status` says what it enforces.
pub fn ready(status: &str) {
    send("ready", &[NotifyState::Ready, NotifyState::Status(status)]);
}

/// What the instance does while it is not ready (waiting for its cgroup): `STATUS=` only.
pub fn status(status: &str) {
    send("status", &[NotifyState::Status(status)]);
}

/// A reload starts (SIGHUP): `RELOADING=1` with the monotonic time, as systemd 253 and later
/// want it; [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("reloading", &[NotifyState::Reloading, now]),
        Err(e) => tracing::warn!("reading the monotonic clock for systemd failed: {e}"),
    }
}

/// The instance stops (detaches, or leaves its pins enforcing).
pub fn stopping(status: &str) {
    send("stopping", &[NotifyState::Stopping, NotifyState::Status(status)]);
}

fn send(what: &str, states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("telling systemd ({what}) failed: {e}");
    }
}
