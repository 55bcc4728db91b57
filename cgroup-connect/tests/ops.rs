//! Operating an instance on the real kernel: live edits, reloads under load, events, counters,
//! metrics and audit mode.
mod common;

use std::{
    io::{BufRead as _, Read as _, Write as _},
    os::unix::fs::PermissionsExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    Blocker,
    Outcome::{Allowed, Blocked},
    Prober, TempDir, as_user, blocker_ok, blocker_output, connect_in, flood, lo, outcome,
    temp_cgroup,
};

/// The unprivileged user the attacks run as.
const NOBODY: u32 = 65534;

#[test]
fn live_add_and_remove_while_connections_run() {
    require_privileges!();
    let cg = temp_cgroup();
    let b = Blocker::start(&["--cgroup", cg.path().to_str().unwrap(), "--block", "127.0.0.2"]);
    let prober = Prober::start(
        cg.path(),
        vec![(lo("127.0.0.2"), vec![Blocked]), (lo("127.0.0.1"), vec![Allowed])],
    );
    for _ in 0..20 {
        let _ = blocker_ok(&["add", &b.name, "127.0.0.5", "udp://127.0.0.6:53"]);
        assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.5"))), Blocked, "added at once");
        let _ = blocker_ok(&["remove", &b.name, "127.0.0.5"]);
        assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.5"))), Allowed, "removed at once");
    }
    let listed = blocker_ok(&["list", &b.name, "--json"]);
    assert!(
        listed.contains("\"dst\": \"127.0.0.2\"") && listed.contains("udp://127.0.0.6:53"),
        "{listed}"
    );
    let report = prober.finish();
    assert!(
        report.probes > 10 && report.wrong.is_empty(),
        "untouched rules changed verdict: {report:?}"
    );
    // Removing a rule the instance does not have is an error that names it.
    let out = blocker_output(&["remove", &b.name, "10.9.9.9"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("10.9.9.9"));
}

const POLICY_A: &str = "[[rule]]\naction = \"block\"\ndst = \"127.0.0.0/24\"\n\n[[rule]]\naction = \"allow\"\ndst = \"127.0.0.1\"\n";
const POLICY_B: &str = "default = \"allow\"\n\n[[rule]]\naction = \"block\"\ndst = \"127.0.0.2\"\n\n[[rule]]\naction = \"block\"\ndst = \"127.0.0.0/8\"\nproto = \"udp\"\n";

/// Two threads connect in a loop while SIGHUP swaps between two policies 100 times. Both
/// policies block 127.0.0.2 and allow 127.0.0.1 (by different rules); 127.0.0.3 is blocked by
/// one and allowed by the other. A state that is neither (a gap, a half-written table) would
/// allow 127.0.0.2 or block 127.0.0.1.
#[test]
fn reload_under_load_swaps_between_whole_policies() {
    require_privileges!();
    let cg = temp_cgroup();
    let dir = TempDir::new("reload");
    let policy = dir.write("policy.toml", POLICY_A);
    let b = Blocker::start(&[
        "--cgroup",
        cg.path().to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    let cases = vec![
        (lo("127.0.0.2"), vec![Blocked]),
        (lo("127.0.0.1"), vec![Allowed]),
        (lo("127.0.0.3"), vec![Blocked, Allowed]),
    ];
    let probers = [Prober::start(cg.path(), cases.clone()), Prober::start(cg.path(), cases)];
    let pid = i32::try_from(b.pid()).unwrap();
    for i in 0..100 {
        let _ = dir.write("policy.toml", if i % 2 == 0 { POLICY_B } else { POLICY_A });
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        assert!(
            b.wait_for_line("reloaded:", Duration::from_secs(10)).is_some(),
            "reload {i} not confirmed"
        );
    }
    for p in probers {
        let report = p.finish();
        assert!(
            report.probes > 10 && report.wrong.is_empty(),
            "a state that is neither policy: {report:?}"
        );
    }
}

#[test]
fn a_bad_reload_keeps_the_old_policy() {
    require_privileges!();
    let cg = temp_cgroup();
    let dir = TempDir::new("bad-reload");
    let policy = dir.write("policy.toml", POLICY_B);
    let b = Blocker::start(&[
        "--cgroup",
        cg.path().to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    let _ = dir.write("policy.toml", "[[rule]]\naction = \"blok\"\ndst = \"127.0.0.2\"\n");
    let out = blocker_output(&["reload", &b.name], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("policy.toml:2: unknown action \"blok\""),
        "{out:?}"
    );
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked, "old policy in force");
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.3"))), Allowed);
}

/// 100,000 blocked attempts with a reader writing events to a file: every attempt is either
/// an event in the file or a counted loss, and the blocker's memory stays bounded.
#[test]
fn an_event_flood_is_bounded_and_losses_are_counted() {
    const N: u32 = 100_000;
    require_privileges!();
    let cg = temp_cgroup();
    let (b, _dir, events) = Blocker::with_events(cg.path(), "127.0.0.2", "flood", &[]);
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", b.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap())
            .unwrap()
    };
    let before = rss();
    assert_eq!(flood(cg.path(), lo("127.0.0.2"), N), N, "every attempt blocked");
    let stats: serde_json::Value =
        serde_json::from_str(&blocker_ok(&["stats", &b.name, "--json"])).unwrap();
    assert_eq!(stats["blocked"], u64::from(N));
    let lost = stats["events_lost"].as_u64().unwrap();
    // The reader catches up with what the ring held (bounded wait).
    let mut lines = 0;
    for _ in 0..200 {
        lines = std::fs::read_to_string(&events).map_or(0, |t| t.lines().count() as u64);
        if lines + lost >= u64::from(N) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lines + lost, u64::from(N), "events written ({lines}) + lost ({lost})");
    let grown = rss().saturating_sub(before);
    assert!(grown < 16 * 1024, "blocker RSS grew by {grown} kB during the flood");
}

#[test]
fn audit_mode_reports_but_blocks_nothing() {
    require_privileges!();
    let cg = temp_cgroup();
    let (b, _dir, events) = Blocker::with_events(cg.path(), "127.0.0.2", "audit", &["--audit"]);
    assert!(b.attached_line.contains("audit mode"), "{}", b.attached_line);
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Allowed);
    let stats: serde_json::Value =
        serde_json::from_str(&blocker_ok(&["stats", &b.name, "--json"])).unwrap();
    assert_eq!(
        (stats["blocked"].as_u64(), stats["audit_would_block"].as_u64()),
        (Some(0), Some(1)),
        "{stats}"
    );
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&events).unwrap_or_default();
        if !text.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let event: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("an event")).unwrap();
    assert_eq!(event["verdict"], "audit_would_block");
    assert_eq!(event["rule"], "block 127.0.0.2");
}

#[test]
fn events_command_streams_json_with_every_field() {
    require_privileges!();
    let cg = temp_cgroup();
    let b =
        Blocker::start(&["--cgroup", cg.path().to_str().unwrap(), "--block", "tcp://127.0.0.2:9"]);
    let mut reader = std::process::Command::new(common::BLOCKER)
        .args(["events", &b.name, "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked);
    let mut line = String::new();
    let mut out = std::io::BufReader::new(reader.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = out.read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).expect("an event within 10 s");
    let _ = reader.kill();
    let _ = reader.wait();
    let e: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("{err}: {line}"));
    for key in [
        "time",
        "pid",
        "tgid",
        "uid",
        "comm",
        "cgroup_id",
        "protocol",
        "family",
        "dst",
        "port",
        "verdict",
        "rule",
    ] {
        assert!(e.get(key).is_some(), "no {key} in {line}");
    }
    assert_eq!(
        (e["dst"].as_str(), e["port"].as_u64(), e["protocol"].as_str()),
        (Some("127.0.0.2"), Some(9), Some("tcp"))
    );
    assert_eq!(
        (e["verdict"].as_str(), e["rule"].as_str()),
        (Some("blocked"), Some("block tcp://127.0.0.2:9"))
    );
    assert_eq!(e["cgroup_id"].as_u64(), Some(cg.dir().id().unwrap()));
}

#[test]
fn stats_status_and_metrics() {
    require_privileges!();
    let cg = temp_cgroup();
    let b = Blocker::start(&[
        "--cgroup",
        cg.path().to_str().unwrap(),
        "--block",
        "127.0.0.2",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let line =
        b.wait_for_line("serving metrics on", Duration::from_secs(10)).expect("metrics line");
    let addr = line
        .trim_start_matches("serving metrics on http://")
        .trim_end_matches("/metrics")
        .to_owned();
    for _ in 0..3 {
        assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked);
    }
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.1"))), Allowed);
    let stats: serde_json::Value =
        serde_json::from_str(&blocker_ok(&["stats", &b.name, "--json"])).unwrap();
    assert_eq!(
        (stats["blocked"].as_u64(), stats["allowed"].as_u64()),
        (Some(3), Some(1)),
        "{stats}"
    );
    assert_eq!(stats["rules"][0]["rule"], "block 127.0.0.2");
    let listing = blocker_ok(&["status", "--json"]);
    assert!(listing.contains(&b.name) && listing.contains("\"state\": \"running\""), "{listing}");
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    let me = &b.name;
    for want in [
        format!("cgroup_connect_decisions_total{{instance=\"{me}\",verdict=\"blocked\"}} 3"),
        format!("cgroup_connect_decisions_total{{instance=\"{me}\",verdict=\"allowed\"}} 1"),
        format!("cgroup_connect_rule_hits_total{{instance=\"{me}\",rule=\"block 127.0.0.2\"}} 3"),
        format!("cgroup_connect_events_lost_total{{instance=\"{me}\"}} 0"),
        format!("cgroup_connect_rules{{instance=\"{me}\"}} 1"),
        "cgroup_connect_build_info".to_owned(),
    ] {
        assert!(body.contains(&want), "no {want} in\n{body}");
    }
}

/// Under systemd (`Type=notify`): READY=1 with a STATUS= of the rule counts once the instance
/// enforces; on SIGHUP, `RELOADING=1` with `MONOTONIC_USEC`, then READY=1 with the new counts; on
/// SIGTERM, STOPPING=1. The notify socket is one the test binds in its own 0700 folder.
#[test]
fn tells_systemd_when_it_enforces_reloads_and_stops() {
    require_privileges!();
    let cg = temp_cgroup();
    let dir = TempDir::new("notify");
    let notify = common::NotifySocket::bind(dir.path());
    let list = dir.write("list.txt", "127.0.0.2\n");
    let name = common::instance_name();
    let mut child = Command::new(common::BLOCKER)
        .args(["run", "--cgroup", cg.path().to_str().unwrap(), "--name", &name])
        .args(["--block-list", list.to_str().unwrap()])
        .env("NOTIFY_SOCKET", notify.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let next = || notify.next();
    let ready = next();
    let enforcing = outcome(connect_in(cg.path(), lo("127.0.0.2")));
    std::fs::write(&list, "127.0.0.2\n127.0.0.3\n").unwrap();
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGHUP) };
    let reloading = next();
    let reloaded = next();
    // SAFETY: as above.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let stopping = next();
    let status = child.wait().unwrap();
    common::detach_quietly(&name);
    assert_eq!(ready, "READY=1\nSTATUS=enforcing 1 rules (1 IPv4, 0 IPv6 prefixes)\n");
    assert_eq!(enforcing, Blocked, "enforcing once ready");
    let lines: Vec<&str> = reloading.lines().collect();
    assert!(
        lines.len() == 2
            && lines[0] == "RELOADING=1"
            && lines[1].strip_prefix("MONOTONIC_USEC=").is_some_and(|t| t.parse::<u64>().is_ok()),
        "{reloading:?}"
    );
    assert_eq!(reloaded, "READY=1\nSTATUS=enforcing 2 rules (2 IPv4, 0 IPv6 prefixes)\n");
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping:?}");
    assert!(status.success(), "{status:?}");
}

/// Reloads that move the table to another size class (one rule <-> 100,000 rules) while two
/// threads connect: the address both policies block stays blocked, the one both allow stays
/// allowed.
#[test]
fn reloads_across_table_sizes_leave_no_gap() {
    require_privileges!();
    let cg = temp_cgroup();
    let dir = TempDir::new("classes");
    let small = "127.0.0.2\n".to_owned();
    let big: String = std::iter::once("127.0.0.2".to_owned())
        .chain((0..100_000u32).map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + 2 * i).to_string()))
        .map(|l| l + "\n")
        .collect();
    let list = dir.write("list.txt", &small);
    let b = Blocker::start(&[
        "--cgroup",
        cg.path().to_str().unwrap(),
        "--block-list",
        list.to_str().unwrap(),
    ]);
    let cases = vec![(lo("127.0.0.2"), vec![Blocked]), (lo("127.0.0.1"), vec![Allowed])];
    let probers = [Prober::start(cg.path(), cases.clone()), Prober::start(cg.path(), cases)];
    for i in 0..6 {
        let _ = dir.write("list.txt", if i % 2 == 0 { &big } else { &small });
        let _ = blocker_ok(&["reload", &b.name]);
    }
    for p in probers {
        let report = p.finish();
        assert!(report.probes > 10 && report.wrong.is_empty(), "{report:?}");
    }
}

/// `--events FILE` as root: a symbolic link that a user made to a file of root's is refused
/// before anything attaches, and its target is untouched; a new file is made with mode 0600.
/// The link is tried in a sticky, world-writable folder like /tmp (where
/// `fs.protected_symlinks`, when on, already stops root following it) and in a folder of the
/// user's (where nothing does).
#[test]
fn events_file_refuses_a_link_and_is_made_private() {
    require_privileges!();
    let cg = temp_cgroup();
    let cgroup = cg.path().to_str().unwrap();
    let private = TempDir::new("events-private");
    let target = private.write("roots-file", "root's own\n");
    let (shared, users) = (TempDir::new("events-shared"), TempDir::new("events-nobody"));
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(users.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(users.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for dir in [&shared, &users] {
        let link = dir.path().join("events.jsonl");
        let made = as_user(Command::new("ln").arg("-s").arg(&target).arg(&link), NOBODY)
            .status()
            .unwrap_or_else(|e| panic!("ln -s as nobody: {e}"));
        assert!(made.success(), "nobody could not make {}: {made}", link.display());
        let link = link.to_str().unwrap();
        let name = common::instance_name();
        let args = ["run", "--cgroup", cgroup, "--name", &name, "--block", "127.0.0.2"];
        let out = blocker_output(&[&args[..], &["--events", link]].concat(), None);
        common::detach_quietly(&name);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(link) && err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root's own\n");
        common::assert_nothing_attached(cg.path());
    }

    let events = private.path().join("events.jsonl");
    let mut b = Blocker::start(&["--cgroup", cgroup, "--events", events.to_str().unwrap()]);
    let mode = std::fs::metadata(&events).unwrap().permissions().mode() & 0o7777;
    let _ = b.stop(libc::SIGTERM);
    assert_eq!(mode, 0o600, "events file mode {mode:o}");
}

/// A process names itself with a newline and an escape sequence, then is blocked: the text
/// form of `blocker events` prints one line, with the name escaped.
#[test]
fn event_text_escapes_process_names() {
    const FORGED: &[u8] = b"x\n\x1b[31mFAKE\0";
    require_privileges!();
    let cg = temp_cgroup();
    let b =
        Blocker::start(&["--cgroup", cg.path().to_str().unwrap(), "--block", "tcp://127.0.0.2:9"]);
    let mut reader = Command::new(common::BLOCKER)
        .args(["events", &b.name])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn blocker events: {e}"));
    let mut out = std::io::BufReader::new(reader.stdout.take().unwrap());
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = Vec::new();
        while out.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            if tx.send(std::mem::take(&mut line)).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let dst = socket2::SockAddr::from(lo("127.0.0.2"));
    let errno = common::in_child("connect under a forged name", Some(cg.path()), None, || {
        // SAFETY: raw syscalls on memory prepared before the fork.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, FORGED.as_ptr());
            let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            let r = libc::connect(s, dst.as_ptr().cast(), dst.len());
            Some(if r == 0 { 0 } else { u32::try_from(*libc::__errno_location()).ok()? })
        }
    });
    assert_eq!(errno, u32::try_from(libc::EPERM).unwrap(), "the connect was not blocked");
    let first = lines.recv_timeout(Duration::from_secs(10)).expect("an event within 10 s");
    let mut printed = vec![first];
    printed.extend(std::iter::from_fn(|| lines.recv_timeout(Duration::from_millis(500)).ok()));
    let _ = reader.kill();
    let _ = reader.wait();
    let text = String::from_utf8_lossy(&printed.concat()).into_owned();
    assert_eq!(printed.len(), 1, "one event, one line: {text:?}");
    assert!(
        !printed[0].split_last().unwrap().1.iter().any(|&c| c < 0x20 || c == 0x7f),
        "raw control bytes: {text:?}"
    );
    assert!(text.contains(" comm=x\\n\\x1b[31mFAKE "), "{text:?}");
}

/// `--metrics` off loopback still serves, with a warning that names the address; on loopback
/// nothing is said. Only loopback traffic: the scrape goes to 127.0.0.1.
#[test]
fn metrics_off_loopback_warn() {
    require_privileges!();
    for (addr, warned) in [("0.0.0.0:0", true), ("127.0.0.1:0", false)] {
        let cg = temp_cgroup();
        let mut b = Blocker::start(&["--cgroup", cg.path().to_str().unwrap(), "--metrics", addr]);
        let line = b.wait_for_line("serving metrics on", Duration::from_secs(10)).expect(addr);
        let bound = line
            .trim_start_matches("serving metrics on http://")
            .trim_end_matches("/metrics")
            .to_owned();
        let port = bound.rsplit(':').next().unwrap();
        let mut conn = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(conn, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut body = String::new();
        conn.read_to_string(&mut body).unwrap();
        assert!(body.contains("cgroup_connect_build_info"), "{addr}: {body}");
        let _ = b.stop(libc::SIGTERM);
        let err = b.stderr();
        let warning = format!("warning: metrics on {bound} are reachable from the network");
        assert_eq!(err.contains(&warning), warned, "{addr}: {err}");
    }
}
