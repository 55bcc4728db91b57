//! An instance's lifecycle, in one place: [`start`] (create, or adopt a pinned instance of the
//! same name), [`apply`] (every change: add, remove, reload, hostname refresh), [`stop`] (the
//! serving process exits) and [`detach`] (remove it from outside).
//!
//! Each step takes the instance's lock, reads its state, computes the policy (sources read
//! now, plus live edits), resolves hostnames, compiles, swaps the tables and writes the state
//! back, with the record of the rules now in force ([`crate::record`]). A failure at any step
//! leaves the tables, the record and the state as they were.
//!
//! The slow steps of a start (reading, resolving, compiling, verifying the programs) run
//! before anything is made or locked, each at an await point: dropping the start there (on
//! SIGINT or SIGTERM) leaves nothing behind.
use std::{
    path::Path,
    time::{Duration, Instant as Clock},
};

use anyhow::{Context as _, bail};
use cgroup_connect_common::{OBSERVE_CAPACITY, programs};

use crate::{
    cgroup::CgroupDir,
    events::ReaderClaim,
    loader::{self, Instance, Prepared},
    pins::{self, InstancePaths, PinError},
    policy::Policy,
    record::{self, Record},
    resolve::Names,
    state::{self, Counts, Lock, Server, State},
    table::{self, Tables},
    timings,
};

/// Another process serves the instance already.
#[derive(Debug, thiserror::Error)]
#[error("instance {name} is already run by process {pid}: stop it, or pick another --name")]
pub struct BusyError {
    pub name: String,
    pub pid: u32,
}

/// The pinned instance of that name is attached elsewhere.
#[derive(Debug, thiserror::Error)]
#[error(
    "instance {name} is attached to cgroup {}, not {}: `blocker detach {name}` first, or pick another --name",
    attached.display(), wanted.display()
)]
pub struct ElsewhereError {
    pub name: String,
    pub attached: std::path::PathBuf,
    pub wanted: std::path::PathBuf,
}

/// Nothing enforces the instance any more: an edit would change nothing and not be kept.
#[derive(Debug, thiserror::Error)]
#[error(
    "instance {name} is not enforced: the process that served it is gone and its links were not pinned, so nothing enforces its rules and the edit would be lost: start it again with `blocker run --name {name} ...`, or remove it with `blocker detach {name}`"
)]
pub struct NotEnforcedError {
    pub name: String,
}

/// `detach` found a process of this program under the instance's pid, but the state (from an
/// older version) cannot tell whether it serves the instance or only reuses the pid.
#[derive(Debug, thiserror::Error)]
#[error(
    "the state of instance {name} names process {pid}, which runs the blocker, but not when it started, so it may be another instance's: if it serves {name}, stop it (kill {pid}), then detach again"
)]
pub struct UnverifiedError {
    pub name: String,
    pub pid: u32,
}

/// A policy in force, its counts and its record: what [`start`] and [`apply`] return.
pub struct Applied {
    pub policy: Policy,
    pub counts: Counts,
    pub record: Record,
}

impl Applied {
    /// `N rules (block 1.2.3.4, allow 10.0.0.0/8, ... and M more), ... default allow`.
    #[must_use]
    pub fn summary(&self, audit: bool) -> String {
        const SHOWN: usize = 5;
        let rules = &self.policy.rules;
        let mut shown: Vec<String> = rules.iter().take(SHOWN).map(|r| r.rule.to_string()).collect();
        if rules.len() > SHOWN {
            shown.push(format!("and {} more", rules.len() - SHOWN));
        }
        let default = self.policy.default.default_word();
        let nat64: Vec<String> = self.policy.nat64.iter().map(ToString::to_string).collect();
        format!(
            "{} rules ({}), {} IPv4 and {} IPv6 prefixes, default {default}{}{}",
            self.counts.rules,
            shown.join(", "),
            self.counts.ipv4,
            self.counts.ipv6,
            if nat64.is_empty() { String::new() } else { format!(", NAT64 {}", nat64.join(" ")) },
            if audit { ", audit mode (nothing is blocked)" } else { "" }
        )
    }
}

/// An instance this process serves, from [`start`] to [`stop`].
pub struct Started {
    pub instance: Instance,
    /// The packet-check programs in force (`programs::PACKET_CHECKS` names).
    pub packet_programs: Vec<String>,
    /// Whether a pinned instance was adopted (its programs kept enforcing throughout).
    pub adopted: bool,
    /// Whether the adopted instance's links had lost their cgroup (removed and made anew at
    /// the same path) and were attached to the new one.
    pub reattached: bool,
    pub applied: Applied,
    /// The claim on its events, when asked for (`blocker run --events`).
    pub reader: Option<ReaderClaim>,
}

/// Reads the state of an existing instance.
///
/// # Errors
/// [`PinError::NoInstance`] when it has none.
pub fn load(paths: &InstancePaths) -> anyhow::Result<State> {
    Ok(State::load(paths)?.ok_or_else(|| PinError::NoInstance { name: paths.name.clone() })?)
}

/// A policy compiled: what a swap puts in force.
struct Compiled {
    policy: Policy,
    tables: Tables,
    counts: Counts,
    record: Record,
}

/// Runs `f` on a blocking thread: the caller may be dropped (on a signal) while it runs.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| anyhow::anyhow!("a worker thread failed: {e}"))
}

/// The policy, tables and record of a state, with hostnames resolved through `names` (which
/// then holds exactly the policy's names).
///
/// The record is written to a file in the instance's state folder as it is made
/// ([`Record::write`]; `locked`: whether the instance's lock is held), not held in memory.
async fn compile(
    state: &State,
    names: &mut Names,
    paths: &InstancePaths,
    locked: bool,
) -> anyhow::Result<Compiled> {
    let read = state.clone();
    let policy = blocking(move || timings::time("read", || read.policy())).await??;
    let started = Clock::now();
    names.sync(&policy.names()).await?;
    timings::add("resolve", started.elapsed());
    if names.wants_fast() {
        let fast = crate::learned::Policy {
            rules: policy.name_rules(),
            known: names.known(),
            hosts: policy.host_addrs(),
            nat64: policy.nat64.clone(),
        };
        names.set_fast(fast);
    }
    let addrs: std::collections::HashMap<String, Vec<std::net::IpAddr>> =
        policy.names().into_iter().map(|n| (n.clone(), names.addrs(&n).collect())).collect();
    let paths = paths.clone();
    let (policy, tables, record) = blocking(move || {
        let addrs_of = |name: &str| addrs.get(name).cloned().unwrap_or_default();
        // The record is written once the tables are compiled, not beside: the compiler's
        // working memory is freed by then, and the two at once made the peak of a start.
        let tables = timings::time("compile", || {
            table::compile(policy.default, policy.table_rules(addrs_of))
        });
        let tables = tables?;
        let record = timings::time("record", || Record::write(&policy, addrs_of, &paths, locked))?;
        anyhow::Ok((policy, tables, record))
    })
    .await??;
    let mut tables = tables;
    tables.nat64.clone_from(&policy.nat64);
    let counts = Counts { rules: policy.rules.len(), ipv4: tables.v4_rules, ipv6: tables.v6_rules };
    Ok(Compiled { policy, tables, counts, record })
}

/// Swaps `compiled` into `instance`, carrying the hit counts of the rules that stay in force
/// over to their new ids (counts made during the swap itself may be lost).
fn swap(paths: &InstancePaths, instance: &mut Instance, compiled: &Compiled) -> anyhow::Result<()> {
    let kept = instance.rule_hits().map(|counts| {
        if counts.is_empty() {
            return counts;
        }
        // A record missing (an instance of an older version) or damaged: no count is kept.
        record::carried_hits(paths, counts, &compiled.policy.rules).unwrap_or_default()
    });
    instance.swap(&compiled.tables, &kept.unwrap_or_default())?;
    Ok(())
}

/// Starts serving the instance `state` describes on `cgroup`: compiles its policy, then
/// creates it, or adopts the pinned instance of the same name (its programs keep enforcing
/// while the new tables swap in), under the instance's lock, and saves the state with this
/// process as its server.
///
/// The verifier takes most of a start: it runs in a thread while the policy is read and
/// compiled, unless a pinned instance will be adopted (its programs are loaded already).
///
/// With `read_events`, the start claims the instance's events ([`ReaderClaim`]) before
/// anything attaches.
///
/// With no `cgroup` (the directory `state.cgroup` names is not made yet) everything is done
/// but the attach: [`follow`] attaches once the directory is there, and until then the state
/// records the cgroup id [`state::NOT_ATTACHED`], so `status` says the instance waits.
///
/// # Errors
/// A bad source, an unresolvable hostname or a capacity limit, [`BusyError`],
/// [`ElsewhereError`], an events reader already there, or a load or attach failure: then
/// nothing new stays attached, pinned or recorded (a pinned instance that was to be adopted
/// keeps enforcing as it did).
pub async fn start(
    paths: &InstancePaths,
    cgroup: Option<&CgroupDir>,
    mut state: State,
    names: &mut Names,
    read_events: bool,
) -> anyhow::Result<Started> {
    // Refusals that need neither the policy nor the programs come at once (checked again
    // under the lock): an unsafe folder, an instance that another process serves.
    paths.check_dirs()?;
    if let Some(prev) = State::load(paths)? {
        if prev.process_alive() {
            bail!(BusyError { name: paths.name.clone(), pid: prev.pid.unwrap_or_default() });
        }
        // A restart keeps what the forwarder learned, until its time is up.
        names.restore(&prev.learned);
    }
    tune_allocator();
    let checks = state.packet_checks();
    let observe_capacity = state.observe_capacity.unwrap_or(OBSERVE_CAPACITY);
    let preparing = (!paths.has_pinned_links())
        .then(|| tokio::task::spawn_blocking(move || Prepared::load(checks, observe_capacity)));
    // Everything that can fail on the policy or the programs fails here, before anything is
    // made, locked or attached (but the folder of all instances' state folders, where the
    // record is written as it is made: made now if missing, removed again if left empty).
    let made = (!Path::new(pins::STATE_ROOT).exists()).then_some(MadeStateRoot);
    if made.is_some() {
        InstancePaths::create_state_root()?;
    }
    let mut compiled = compile(&state, names, paths, false).await?;
    // The policy file's socket kinds join the flag's.
    for kind in &compiled.policy.allow_sockets {
        if !state.allow_sockets.contains(kind) {
            state.allow_sockets.push(kind.clone());
        }
    }
    let prepared = match preparing {
        Some(thread) => {
            let mut prepared = thread
                .await
                .map_err(|_| anyhow::anyhow!("loading the BPF programs panicked"))??;
            if let Some(checks) = state.packet_checks() {
                prepared.allow_sockets(checks.allowed_sockets)?;
            }
            Some(prepared)
        }
        None => None,
    };
    state.counts = compiled.counts;
    state.nat64.clone_from(&compiled.tables.nat64);
    state.learned = names.kept();
    let (instance, adopted, reattached, reader) =
        attach(paths, cgroup, &mut compiled, &mut state, prepared, read_events)?;
    drop(made);
    let Compiled { policy, tables, counts, record } = compiled;
    drop(tables);
    release_free_memory();
    Ok(Started {
        instance,
        adopted,
        reattached,
        applied: Applied { policy, counts, record },
        packet_programs: state.packet_programs(),
        reader,
    })
}

/// The folder of all instances' state folders, made by a start before it attached: removed
/// when the start is done with it, if it is empty (a failed start, or another instance's
/// detach while this one started; the record's file is removed before, with the record).
struct MadeStateRoot;

impl Drop for MadeStateRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(pins::STATE_ROOT);
    }
}

/// Creates or adopts the instance under its lock. A failed creation removes whatever it made
/// (pins, state, folders), so no `stale` instance is left.
fn attach(
    paths: &InstancePaths,
    cgroup: Option<&CgroupDir>,
    compiled: &mut Compiled,
    state: &mut State,
    prepared: Option<Prepared>,
    read_events: bool,
) -> anyhow::Result<(Instance, bool, bool, Option<ReaderClaim>)> {
    paths.create_dirs()?;
    let lock = Lock::acquire(paths)?;
    let previous = State::load(paths)?;
    if let Some(prev) = previous.as_ref().filter(|p| p.process_alive()) {
        bail!(BusyError { name: paths.name.clone(), pid: prev.pid.unwrap_or_default() });
    }
    let adopting = paths.has_pinned_links();
    // The body runs in a closure so that every `?` reaches the clean-up below.
    let result = (|| {
        let reader =
            read_events.then(|| ReaderClaim::take(paths, "blocker run --events")).transpose()?;
        let pending = compiled.record.prepare(paths)?;
        // Links whose cgroup was removed enforce nothing: with the programs pinned they are
        // attached to the cgroup there now; pins of a build that did not pin programs are
        // replaced by a new instance.
        let on_cgroup = cgroup.is_some_and(|cgroup| links_on(paths, cgroup));
        let found = if paths.has_pinned_links() && (on_cgroup || paths.has_pinned_programs()) {
            // A state written before paths were stored canonical may name the cgroup otherwise.
            if let Some(prev) = &previous
                && std::fs::canonicalize(&prev.cgroup).unwrap_or_else(|_| prev.cgroup.clone())
                    != state.cgroup
            {
                bail!(ElsewhereError {
                    name: paths.name.clone(),
                    attached: prev.cgroup.clone(),
                    wanted: state.cgroup.clone()
                });
            }
            let checks = state.packet_checks();
            let mut instance = Instance::open(paths)?;
            swap(paths, &mut instance, compiled)?;
            instance.set_flags(state.audit, checks.map_or(0, |c| c.allowed_sockets))?;
            if let Some(cgroup) = cgroup.filter(|_| !on_cgroup) {
                instance.reattach(paths, cgroup, true)?;
            }
            // Pinned by a version with other packet checks, or with other flags: the checks
            // asked for now join its pinned maps, the others go.
            instance.set_packet_checks(paths, cgroup, checks)?;
            // Its DNS programs and port, as this start asks (with or without a forwarder).
            instance.set_dns(paths, cgroup, state.dns_port)?;
            state.since = previous.as_ref().map_or(state.since, |p| p.since);
            (instance, true, !on_cgroup)
        } else {
            // Pins left by an unpinned instance that was killed: nothing enforces them.
            loader::unpin(paths)?;
            let prepared = match prepared {
                Some(prepared) => prepared,
                // The pins went away while the policy compiled: load now.
                None => Prepared::load(
                    state.packet_checks(),
                    state.observe_capacity.unwrap_or(OBSERVE_CAPACITY),
                )?,
            };
            let tables = &compiled.tables;
            let (pinned, dns) = (state.pinned, state.dns_port);
            let created =
                Instance::create(paths, cgroup, tables, state.audit, pinned, dns, prepared)?;
            (created, false, false)
        };
        pending.commit()?;
        // The checks in force are those whose programs are pinned now (every instance pins
        // its programs).
        state.packet_programs = Some(
            programs::PACKET_CHECKS
                .iter()
                .filter(|name| paths.program(name).exists())
                .map(|name| (*name).to_owned())
                .collect(),
        );
        state.cgroup_id = Some(match cgroup {
            Some(cgroup) => cgroup.id().context("reading the cgroup's id")?,
            None => state::NOT_ATTACHED,
        });
        state.served_by_me();
        state.save(paths)?;
        Ok((found.0, found.1, found.2, reader))
    })();
    if result.is_err() && !adopting {
        // Nothing enforces what is left (a process killed before, or this failed start).
        let _ = remove(paths);
    }
    drop(lock);
    result
}

/// Whether every pinned link of the instance is attached to `cgroup` as it is now (a cgroup
/// removed and made anew at the same path has another id).
fn links_on(paths: &InstancePaths, cgroup: &CgroupDir) -> bool {
    let Ok(id) = cgroup.id() else { return false };
    cgroup_connect_common::programs::LINKED
        .iter()
        .map(|p| paths.link(p))
        .filter(|link| link.exists())
        .all(|link| loader::pinned_link_cgroup(&link).is_ok_and(|on| on == id))
}

/// The instance's cgroup was removed and made anew at the same path (a service restart):
/// attaches its programs to `cgroup`, the new directory, and records its id.
///
/// # Errors
/// A program pin is missing or the attach fails; the state is unchanged then.
pub fn follow(
    paths: &InstancePaths,
    instance: &mut Instance,
    cgroup: &CgroupDir,
    pinned: bool,
) -> anyhow::Result<()> {
    let _lock = Lock::acquire(paths)?;
    instance.reattach(paths, cgroup, pinned)?;
    let mut state = load(paths)?;
    state.cgroup_id = Some(cgroup.id().context("reading the cgroup's id")?);
    state.save(paths)?;
    Ok(())
}

/// Applies `edit` to the state of instance `paths` under its lock, then recompiles and swaps
/// its tables: the one path of every change (add, remove, reload, hostname refresh).
///
/// # Errors
/// [`NotEnforcedError`] when neither a process nor pinned links enforce the instance, an
/// unsafe folder ([`PinError::Unsafe`]), whatever `edit` refuses, or the compile or swap
/// failure; nothing is changed then.
pub async fn apply(
    paths: &InstancePaths,
    names: &mut Names,
    edit: impl FnOnce(&mut State) -> anyhow::Result<()>,
) -> anyhow::Result<Applied> {
    paths.check_dirs()?;
    if !paths.state.exists() {
        return Err(PinError::NoInstance { name: paths.name.clone() }.into());
    }
    let _lock = Lock::acquire(paths)?;
    let mut state = load(paths)?;
    if !state.process_alive() && !paths.has_pinned_links() {
        bail!(NotEnforcedError { name: paths.name.clone() });
    }
    edit(&mut state)?;
    tune_allocator();
    let mut compiled = compile(&state, names, paths, true).await?;
    let new: Vec<&String> =
        compiled.policy.allow_sockets.iter().filter(|k| !state.allow_sockets.contains(k)).collect();
    if !new.is_empty() {
        // The socket checks are set at start: refusing the reload would keep the old rules too.
        tracing::warn!(
            "allow_sockets {new:?} takes effect at the next start of instance {} (the socket \
             kinds allowed now stay)",
            paths.name
        );
    }
    let pending = compiled.record.prepare(paths)?;
    swap(paths, &mut Instance::open(paths)?, &compiled)?;
    pending.commit()?;
    let Compiled { policy, tables, counts, record } = compiled;
    state.counts = counts;
    state.nat64.clone_from(&tables.nat64);
    state.learned = names.kept();
    drop(tables);
    state.save(paths)?;
    release_free_memory();
    Ok(Applied { policy, counts, record })
}

/// Counts a reload or hostname refresh that failed (the old policy stays in force) in the
/// instance's state, for the metrics. Best effort: a state that cannot be read or written
/// keeps its count, and the failure itself is reported by the caller.
pub fn count_failed_reload(paths: &InstancePaths) {
    // As `apply` does: never through a folder that is not root's, nor for no instance.
    if paths.check_dirs().is_err() || !paths.state_file().exists() {
        return;
    }
    let Ok(_lock) = Lock::acquire(paths) else { return };
    if let Ok(Some(mut state)) = State::load(paths) {
        state.reloads.failed += 1;
        let _ = state.save(paths);
    }
}

/// The serving process exits: a pinned instance keeps enforcing, with no process; any other
/// is detached and its pins and folders removed.
///
/// # Errors
/// The state cannot be saved, or a pin or folder cannot be removed.
pub fn stop(paths: &InstancePaths, instance: Instance, pinned: bool) -> anyhow::Result<()> {
    let _lock = Lock::acquire(paths)?;
    if pinned {
        let mut state = load(paths)?;
        state.served_by_none();
        state.save(paths)?;
        Ok(())
    } else {
        drop(instance);
        remove(paths)
    }
}

/// Removes an instance from outside: stops the process serving it, if any (SIGTERM, then up
/// to 10 s), then removes its pins (which detaches pinned links) and its folders. A process
/// that only reuses the instance's pid is never signalled.
///
/// # Errors
/// No such instance, an unsafe folder ([`PinError::Unsafe`]), a process that does not exit,
/// [`UnverifiedError`], or a pin that cannot be removed.
pub fn detach(paths: &InstancePaths) -> anyhow::Result<()> {
    paths.check_dirs()?;
    if !paths.exists() {
        return Err(PinError::NoInstance { name: paths.name.clone() }.into());
    }
    let state = State::load(paths).ok().flatten();
    match state.as_ref().map_or(Server::None, State::server) {
        Server::Alive(pid) => terminate(pid, state.and_then(|s| s.pid_start))?,
        Server::Unverified(pid) => bail!(UnverifiedError { name: paths.name.clone(), pid }),
        Server::None => {}
    }
    let _lock = if paths.state.exists() { Some(Lock::acquire(paths)?) } else { None };
    remove(paths)
}

/// Unpins everything of the instance and removes its folders (the lock must be held).
fn remove(paths: &InstancePaths) -> anyhow::Result<()> {
    loader::unpin(paths)?;
    pins::remove_dirs(paths)
        .with_context(|| format!("removing the folders of instance {}", paths.name))
}

/// SIGTERM, then up to 10 s for the process (`pid`, started at `start`) to exit.
fn terminate(pid: u32, start: Option<u64>) -> anyhow::Result<()> {
    let pid_t = i32::try_from(pid).context("pid out of range")?;
    // SAFETY: a signal to a process we checked runs this program and started when the
    // instance's did.
    unsafe { libc::kill(pid_t, libc::SIGTERM) };
    let deadline = Clock::now() + Duration::from_secs(10);
    while state::is_process(pid, start) {
        anyhow::ensure!(
            Clock::now() < deadline,
            "process {pid} did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Sets glibc's allocator up for a compile (musl's allocator, in the static build, has one
/// heap and returns free memory itself):
/// - one malloc arena for all threads, so what the loader frees can be given back;
/// - a fixed mmap threshold: each buffer of 1 MiB or more (the list's text, the rules, the
///   compiler's arrays) is a mapping of its own, returned when freed and grown in place.
///   glibc otherwise raises the threshold to the size of each such buffer freed, and the
///   next ones (up to 32 MiB) come from the heap, where growing one copies it and a freed
///   one stays resident: that added tens of MB to the peak of a start at a million rules.
fn tune_allocator() {
    // SAFETY: mallopt only tunes the allocator.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    };
}

/// Gives the heap that parsing and compiling used back to the system: a long-running
/// instance keeps only its policy.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only releases free heap pages (glibc; see `start` for musl).
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
}
