//! How long each phase of a start or a reload took, for `--timings` and the benchmarks:
//! reading the policy, compiling it, writing the tables, loading and attaching.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

static PHASES: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());

/// Runs `f`, adding its duration to `phase`.
pub fn time<T>(phase: &'static str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    add(phase, start.elapsed());
    out
}

/// Adds `took` to `phase`.
pub fn add(phase: &'static str, took: Duration) {
    let mut phases = PHASES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match phases.iter_mut().find(|(p, _)| *p == phase) {
        Some((_, total)) => *total += took,
        None => phases.push((phase, took)),
    }
}

/// `timings: read=0.212s compile=0.150s write=0.004s attach=0.020s`, and clears the record.
pub fn take_report() -> String {
    let mut phases = PHASES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let parts: Vec<String> =
        phases.iter().map(|(p, d)| format!("{p}={:.6}s", d.as_secs_f64())).collect();
    phases.clear();
    format!("timings: {}", parts.join(" "))
}
