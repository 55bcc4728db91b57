//! What `list`, `stats`, events and metrics report: the rules in force, as recorded when they
//! were swapped in, whatever has happened to the files since; hit counts that follow their
//! rule across reloads; and one events reader at a time.
mod common;

use std::{
    io::{BufRead as _, Read as _, Write as _},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{
    BLOCKER, Blocker, Outcome::Blocked, TempDir, blocker_ok, blocker_output, connect_each,
    connect_in, flood, lo, outcome, temp_cgroup,
};

/// `list --json` as (id, rule, origin) triples.
fn listed(name: &str) -> Vec<(u64, String, String)> {
    let list: serde_json::Value = serde_json::from_str(&blocker_ok(&["list", name, "--json"]))
        .unwrap_or_else(|e| panic!("list {name}: {e}"));
    list["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("no rules in {list}"))
        .iter()
        .map(|r| {
            let (action, dst) = (r["action"].as_str().unwrap(), r["dst"].as_str().unwrap());
            let rule = r["rule"].as_str().unwrap();
            assert_eq!(rule, format!("{action} {dst}"), "{r}");
            (r["id"].as_u64().unwrap(), rule.to_owned(), r["origin"].to_string())
        })
        .collect()
}

/// `stats --json`'s rules as (id, rule, hits).
fn rule_hits(name: &str) -> Vec<(u64, String, u64)> {
    let stats: serde_json::Value = serde_json::from_str(&blocker_ok(&["stats", name, "--json"]))
        .unwrap_or_else(|e| panic!("stats {name}: {e}"));
    let mut hits: Vec<(u64, String, u64)> = stats["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("no rules in {stats}"))
        .iter()
        .map(|r| {
            let rule = r["rule"].as_str().unwrap().to_owned();
            (r["id"].as_u64().unwrap(), rule, r["hits"].as_u64().unwrap())
        })
        .collect();
    hits.sort();
    hits
}

/// The events FILE holds `n` lines (waiting up to 10 s), returned as JSON.
fn events(file: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= n || Instant::now() > deadline {
            assert_eq!(lines.len(), n, "events: {text}");
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One scrape of `/metrics` at `addr`.
fn scrape(addr: &str) -> String {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    body
}

/// A list file edited without a reload, then made unreadable: `list`, `stats`, events and
/// metrics keep naming the rules in force. A reload that keeps a rule keeps its hits, under
/// its new id; a live edit by another process names its rule in the running process's events.
#[test]
fn reports_name_the_rules_in_force() {
    require_privileges!();
    let cg = temp_cgroup();
    let dir = TempDir::new("reports");
    let list = dir.write("list.txt", "127.0.0.2\n127.0.0.3\n");
    let events_file = dir.path().join("events.jsonl");
    let b = Blocker::start(&[
        "--cgroup",
        cg.path().to_str().unwrap(),
        "--block-list",
        list.to_str().unwrap(),
        "--block",
        "tcp://localhost:9",
        "--events",
        events_file.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
    ]);
    let line = b.wait_for_line("serving metrics on", Duration::from_secs(10)).expect("metrics");
    let addr = line.trim_start_matches("serving metrics on http://").trim_end_matches("/metrics");
    let origin = |n: usize| format!("\"{}:{n}\"", list.display());
    let in_force = vec![
        (1, "block tcp://localhost:9".to_owned(), "\"--block\"".to_owned()),
        (2, "block 127.0.0.2".to_owned(), origin(1)),
        (3, "block 127.0.0.3".to_owned(), origin(2)),
    ];
    assert_eq!(listed(&b.name), in_force);

    // Edited, not reloaded: nothing reported changes.
    let _ = dir.write("list.txt", "127.0.0.9\n127.0.0.2\n");
    assert_eq!(listed(&b.name), in_force, "list shows rules not in force");
    for _ in 0..2 {
        assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.3"))), Blocked);
    }
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked);
    let seen = events(&events_file, 3);
    assert_eq!(
        (seen[0]["rule_id"].as_u64(), seen[0]["rule"].as_str()),
        (Some(3), Some("block 127.0.0.3"))
    );
    assert_eq!(seen[2]["rule"], "block 127.0.0.2");
    let hits = vec![(2, "block 127.0.0.2".to_owned(), 1), (3, "block 127.0.0.3".to_owned(), 2)];
    assert_eq!(rule_hits(&b.name), hits);
    assert!(scrape(addr).contains("rule=\"block 127.0.0.3\"} 2"));

    // Broken, then unreadable: reports still work.
    let _ = dir.write("list.txt", "not an address\n");
    assert_eq!(listed(&b.name), in_force, "a broken file broke list");
    assert_eq!(rule_hits(&b.name), hits, "a broken file broke stats");
    std::fs::remove_file(&list).unwrap();
    assert_eq!(listed(&b.name), in_force, "a missing file broke list");

    // A reload: 127.0.0.3 stays (now id 4) with its hits, 127.0.0.2 goes with its own.
    let _ = dir.write("list.txt", "127.0.0.5\n127.0.0.6\n127.0.0.3\n");
    let _ = blocker_ok(&["reload", &b.name]);
    assert_eq!(listed(&b.name)[3], (4, "block 127.0.0.3".to_owned(), origin(3)));
    assert_eq!(rule_hits(&b.name), [(4, "block 127.0.0.3".to_owned(), 2)], "hits after reload");
    let body = scrape(addr);
    assert!(body.contains("rule=\"block 127.0.0.3\"} 2"), "{body}");
    assert!(!body.contains("block 127.0.0.2"), "{body}");

    // Another process's live edit: the running process names the added rule in its events.
    let _ = blocker_ok(&["add", &b.name, "127.0.0.8"]);
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.8"))), Blocked);
    let seen = events(&events_file, 4);
    let id = listed(&b.name).iter().find(|r| r.1 == "block 127.0.0.8").expect("listed").0;
    assert_eq!(
        (seen[3]["rule_id"].as_u64(), seen[3]["rule"].as_str()),
        (Some(id), Some("block 127.0.0.8"))
    );
    let origin = listed(&b.name).into_iter().find(|r| r.0 == id).unwrap().2;
    assert_eq!(origin, "\"blocker add\"");
}

/// The addresses 127.1.0.0 onwards, one per rule id from 1.
fn many(n: u32) -> Vec<std::net::SocketAddr> {
    (0..n).map(|i| lo(&std::net::Ipv4Addr::from(0x7f01_0000 + i).to_string())).collect()
}

/// Every rule is counted, however many are hit (no eviction: more than the 16,384 rules the
/// earlier LRU table held), and counts survive a reload that grows the counter array past its
/// size class (16,383 rule ids in the first).
#[test]
fn every_rule_is_counted_across_a_growing_reload() {
    require_privileges!();
    let cg = temp_cgroup();
    let dir = TempDir::new("many-hits");
    let text = |n: u32| many(n).iter().map(|a| a.ip().to_string() + "\n").collect::<String>();
    let list = dir.write("list.txt", &text(16_000));
    let b = Blocker::start(&[
        "--cgroup",
        cg.path().to_str().unwrap(),
        "--block-list",
        list.to_str().unwrap(),
    ]);
    assert_eq!(connect_each(cg.path(), &many(16_000)), 16_000, "every attempt blocked");
    assert_eq!(flood(cg.path(), lo("127.1.0.0"), 2), 2);
    // 20,000 rules: the same 16,000 first (same ids), then 4,000 more.
    let _ = dir.write("list.txt", &text(20_000));
    let _ = blocker_ok(&["reload", &b.name]);
    let added: Vec<_> = many(20_000).split_off(16_000);
    assert_eq!(connect_each(cg.path(), &added), 4_000, "every new attempt blocked");
    let mut hits = rule_hits(&b.name);
    hits.sort_by_key(|h| (std::cmp::Reverse(h.2), h.0));
    assert_eq!(hits[0], (1, "block 127.1.0.0".to_owned(), 3), "the first rule's hits kept");
    assert_eq!(hits[1], (2, "block 127.1.0.1".to_owned(), 1), "{hits:?}");
    let stats: serde_json::Value =
        serde_json::from_str(&blocker_ok(&["stats", &b.name, "--json"])).unwrap();
    assert_eq!(stats["blocked"], 20_002, "{stats}");
}

/// `blocker events NAME` with its lines on a channel.
fn reader(name: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(BLOCKER)
        .args(["events", name, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn blocker events: {e}"));
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines)
}

/// A second `blocker events` is refused (exit 2, naming the reader), and the first gets every
/// event; `blocker run --events` is a reader too.
#[test]
fn one_events_reader_at_a_time() {
    require_privileges!();
    let cg = temp_cgroup();
    let b = Blocker::start(&["--cgroup", cg.path().to_str().unwrap(), "--block", "127.0.0.2"]);
    let (mut first, lines) = reader(&b.name);
    // The first reader holds the events once one reaches it: only then is a second one
    // started (started earlier, the second could be the one that gets them, and wait).
    let mut first_line = None;
    for _ in 0..50 {
        assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked);
        first_line = lines.recv_timeout(Duration::from_millis(200)).ok();
        if first_line.is_some() {
            break;
        }
    }
    assert!(first_line.is_some(), "the first reader got no event within 10 s");
    let mut refused = None;
    for _ in 0..100 {
        let out = blocker_output(&["events", &b.name], None);
        if out.status.code() == Some(2) {
            refused = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = refused.expect("a second reader refused within 5 s");
    assert!(
        refused.contains(&format!("read already, by process {} (blocker events)", first.id())),
        "{refused}"
    );
    for _ in 0..3 {
        assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked);
    }
    let got: Vec<String> =
        (0..3).filter_map(|_| lines.recv_timeout(Duration::from_secs(10)).ok()).collect();
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(got.len(), 3, "the one reader missed events: {got:?}");

    let (with_sink, _dir, _file) = Blocker::with_events(cg.path(), "127.0.0.3", "one-reader", &[]);
    let out = blocker_output(&["events", &with_sink.name], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("by process {} (blocker run --events)", with_sink.pid())),
        "{err}"
    );
}

/// The programs wake the events reader only as the ring passes each eighth of its size; the
/// reader also looks every 50 ms. A lone event still arrives (the bound here is
/// generous: without the reader's own look it would never come), and a burst well past the
/// wake-up threshold arrives whole and in order, with no loss counted.
#[test]
fn events_arrive_alone_and_in_bursts() {
    const BURST: u32 = 6_000;
    require_privileges!();
    let cg = temp_cgroup();
    let (b, _dir, file) = Blocker::with_events(cg.path(), "127.0.0.2", "wake", &[]);
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked);
    let sent = Instant::now();
    while std::fs::read_to_string(&file).map_or(0, |t| t.lines().count()) == 0 {
        assert!(sent.elapsed() < Duration::from_secs(2), "a lone event did not arrive in 2 s");
        std::thread::sleep(Duration::from_millis(10));
    }

    // Two halves to two ports: every event of the first comes before any of the second.
    for port in [9, 10] {
        let dst = std::net::SocketAddr::new(lo("127.0.0.2").ip(), port);
        assert_eq!(flood(cg.path(), dst, BURST / 2), BURST / 2, "every attempt blocked");
    }
    let seen = events(&file, 1 + BURST as usize);
    let ports: Vec<u64> = seen[1..].iter().map(|e| e["port"].as_u64().unwrap()).collect();
    let half = (BURST / 2) as usize;
    assert!(ports[..half].iter().all(|&p| p == 9), "events out of order");
    assert!(ports[half..].iter().all(|&p| p == 10), "events out of order");
    let stats: serde_json::Value =
        serde_json::from_str(&blocker_ok(&["stats", &b.name, "--json"])).unwrap();
    assert_eq!(stats["blocked"], u64::from(BURST) + 1);
    assert_eq!(stats["events_lost"], 0);
}
