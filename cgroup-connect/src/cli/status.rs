//! `blocker status`: every instance: name, cgroup, pinned or not, rule counts, mode, NAT64
//! prefixes, since when, and the process serving it. The JSON form is described by
//! docs/schemas/status.schema.json; what is unknown is null there and `-` in the text.
use serde::Serialize;

use crate::{
    pins::{self, InstancePaths},
    state::{Counts, NOT_ATTACHED, State},
};

/// Arguments of `blocker status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// JSON instead of text (described by docs/schemas/status.schema.json)
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    name: String,
    /// None when the state cannot be read.
    cgroup: Option<String>,
    /// The workload as named (`unit nginx.service`), null for a cgroup given as a directory.
    target: Option<String>,
    pinned: bool,
    mode: &'static str,
    /// Whether the packet checks are attached (`--no-packet-checks` turns them off).
    packet_checks: bool,
    /// The packet-check programs in force: socket, setsockopt, lsm, egress.
    packet_hooks: Vec<&'static str>,
    /// The socket kinds `--allow-sockets` allows.
    allow_sockets: Vec<String>,
    /// RFC 3339; None when the state cannot be read.
    since: Option<String>,
    pid: Option<u32>,
    /// "running", "pinned" (no process, still enforcing), "waiting" (a process serves it, its
    /// cgroup is not made yet or was removed: it attaches to the next one made at that path) or "stale" (pins
    /// left, not enforcing; also a pinned instance whose cgroup was removed).
    state: &'static str,
    counts: Counts,
    /// NAT64 prefixes besides the well-known `64:ff9b::/96`.
    nat64: Vec<String>,
    /// The DNS forwarder's port (`--dns-port`), null without one.
    dns_port: Option<u16>,
    /// "off" (no forwarder), "up" (the serving process runs it) or "down" (the programs send
    /// the cgroup's DNS to a forwarder that is gone: DNS from the cgroup fails).
    dns: &'static str,
    /// Waiting for a cgroup that was never attached (not made yet, rather than removed).
    #[serde(skip)]
    never_attached: bool,
}

/// How the text form shows a value that is not known (JSON: null).
const UNKNOWN: &str = "-";

/// Prints the instances.
///
/// # Errors
/// When standard output fails.
pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let rows: Vec<Row> = pins::instance_names()
        .iter()
        .filter_map(|n| InstancePaths::new(n).ok())
        .map(|paths| row(&paths))
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no instances");
    }
    for r in rows {
        if r.state == "waiting" {
            println!(
                "{}: waiting for cgroup {}{}: {}",
                r.name,
                r.cgroup.as_deref().unwrap_or(UNKNOWN),
                r.target.as_ref().map(|t| format!(" ({t})")).unwrap_or_default(),
                if r.never_attached {
                    "not made yet; attaches as soon as it is made, judges nothing until then"
                } else {
                    "it was removed; attaches when it is made again"
                },
            );
            continue;
        }
        println!(
            "{}: {} on {}{}, {}{}, packet checks {}{}, {} rules ({} IPv4, {} IPv6 prefixes){}, since {}{}",
            r.name,
            r.state,
            r.cgroup.as_deref().unwrap_or(UNKNOWN),
            r.target.as_ref().map(|t| format!(" ({t})")).unwrap_or_default(),
            r.mode,
            if r.pinned { ", pinned" } else { "" },
            if r.packet_checks { "on" } else { "off" },
            packet_detail(&r.packet_hooks, &r.allow_sockets),
            r.counts.rules,
            r.counts.ipv4,
            r.counts.ipv6,
            if r.nat64.is_empty() {
                String::new()
            } else {
                format!(", NAT64 {}", r.nat64.join(" "))
            },
            r.since.as_deref().unwrap_or(UNKNOWN),
            r.pid.map(|p| format!(", pid {p}")).unwrap_or_default()
        );
        match (r.dns, r.dns_port) {
            ("up", Some(port)) => println!("{}: DNS forwarder up on 127.0.0.1:{port}", r.name),
            ("down", Some(port)) => println!(
                "{}: DNS forwarder down (127.0.0.1:{port}): DNS from the cgroup fails until \
                 `blocker run --name {} --dns-port {port} ...` serves it again",
                r.name, r.name
            ),
            _ => {}
        }
    }
    Ok(())
}

/// `, hooks socket+setsockopt+lsm` (and `, allows raw,ping`) after `packet checks on`.
fn packet_detail(hooks: &[&str], allowed: &[String]) -> String {
    let hooks =
        if hooks.is_empty() { String::new() } else { format!(", hooks {}", hooks.join("+")) };
    let allowed =
        if allowed.is_empty() { String::new() } else { format!(", allows {}", allowed.join(",")) };
    hooks + &allowed
}

fn row(paths: &InstancePaths) -> Row {
    let state = State::load(paths).ok().flatten();
    let running = state.as_ref().is_some_and(State::process_alive);
    let linked = paths.has_pinned_links();
    // The cgroup the links were attached to is still the one at that path.
    let there = state.as_ref().is_some_and(|s| {
        let now = std::fs::metadata(&s.cgroup).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        now.is_ok_and(|id| s.cgroup_id.is_none_or(|attached| attached == id))
    });
    Row {
        name: paths.name.clone(),
        cgroup: state.as_ref().map(|s| s.cgroup.display().to_string()),
        target: state.as_ref().and_then(|s| s.target.as_ref()).map(ToString::to_string),
        pinned: linked,
        mode: if state.as_ref().is_some_and(|s| s.audit) { "audit" } else { "enforce" },
        packet_checks: state.as_ref().is_some_and(|s| s.packet_checks),
        packet_hooks: state
            .as_ref()
            .map(|s| crate::state::hook_labels(&s.packet_programs()))
            .unwrap_or_default(),
        allow_sockets: state.as_ref().map(|s| s.allow_sockets.clone()).unwrap_or_default(),
        since: state.as_ref().map(|s| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.since),
            )
            .to_string()
        }),
        pid: state.as_ref().and_then(|s| s.pid).filter(|_| running),
        state: match (running, linked, there) {
            (true, _, true) => "running",
            (true, _, false) => "waiting",
            (false, true, true) => "pinned",
            (false, _, _) => "stale",
        },
        nat64: state
            .as_ref()
            .map(|s| s.nat64.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        never_attached: state.as_ref().is_some_and(|s| s.cgroup_id == Some(NOT_ATTACHED)),
        dns_port: state.as_ref().and_then(|s| s.dns_port),
        dns: match state.as_ref().and_then(|s| s.dns_port) {
            None => "off",
            Some(_) if running => "up",
            Some(_) => "down",
        },
        counts: state.map(|s| s.counts).unwrap_or_default(),
    }
}
