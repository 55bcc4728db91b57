//! The outputs scripts and scrapers parse, checked with the tools they use, on the real kernel:
//! the JSON of `status`, `list`, `stats`, `explain` and events against the JSON Schemas in docs/schemas
//! (Python's jsonschema), `--events -` leaving standard output to event lines, and `/metrics`
//! in both text formats through Python's `prometheus_client` parsers.
//!
//! The checks run python3 with the jsonschema and `prometheus_client` packages
//! (./scripts/setup.sh installs them); without them a test skips with the reason, except under
//! CI=true. The kernel matrix leaves this file out: its guests have no Python, and the formats
//! do not depend on the kernel.
mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{
    BLOCKER, Blocker,
    Outcome::{Allowed, Blocked},
    TempDir, blocker_ok, blocker_output, connect_in, detach_quietly, instance_name, lo, outcome,
    temp_cgroup,
};
use serde_json::Value;

/// Debian's python3, where ./scripts/setup.sh installs the packages with apt (a python3 earlier
/// on PATH, such as pyenv's, may lack them).
const PYTHON: &str = "/usr/bin/python3";
const CHECKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/check_formats.py");
const SCHEMAS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/schemas");

/// Whether python3 with jsonschema and `prometheus_client` is here; prints why not (and fails
/// under CI=true, where nothing skips).
fn python_ready() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import jsonschema, prometheus_client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none_or(|v| v != "true"),
            "CI=true: {PYTHON} with jsonschema and prometheus_client is missing (./scripts/setup.sh installs them)"
        );
        eprintln!(
            "skipping: needs {PYTHON} with jsonschema and prometheus_client (./scripts/setup.sh)"
        );
    }
    ok
}

/// Skips the test (with its printed reason) without root or without the Python checks.
macro_rules! require_privileges_and_python {
    () => {
        require_privileges!();
        if !python_ready() {
            return;
        }
    };
}

/// Runs the checker with `args`; panics with its message when it fails.
fn check(args: &[&str]) -> String {
    let out = Command::new(PYTHON)
        .arg(CHECKER)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {PYTHON} {CHECKER}: {e}"));
    assert!(
        out.status.success(),
        "check_formats.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Validates `text` (one document, or JSON lines) against docs/schemas/`schema`.
fn validate(dir: &TempDir, schema: &str, text: &str, lines: bool) {
    let file = dir.write(&format!("{schema}.out"), text);
    let schema = format!("{SCHEMAS}/{schema}.schema.json");
    let mut args = vec!["schema", &schema, file.to_str().unwrap()];
    if lines {
        args.push("--lines");
    }
    let checked = check(&args);
    assert_ne!(checked.trim(), "0", "{text}");
}

/// `blocker run ARGS --events -`, with its status lines read from stderr. On drop: SIGKILL if
/// still running, then `blocker detach`.
struct EventsOnStdout {
    child: Child,
    name: String,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl EventsOnStdout {
    fn start(args: &[&str]) -> Self {
        let name = instance_name();
        let mut child = Command::new(BLOCKER)
            .arg("run")
            .args(args)
            .args(["--name", &name, "--events", "-"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BLOCKER}: {e}"));
        let stdout = lines_of(child.stdout.take().expect("piped stdout"));
        let stderr = lines_of(child.stderr.take().expect("piped stderr"));
        Self { child, name, stdout, stderr }
    }

    /// The next line on stderr that contains `wanted` (within 30 s).
    fn stderr_line(&self, wanted: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(wanted) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no {wanted:?} on stderr; it printed {seen:?}");
    }

    /// `n` lines of stdout (within 10 s).
    fn stdout_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut lines = Vec::new();
        while lines.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(e) => panic!("{} of {n} lines on stdout ({e}): {lines:?}", lines.len()),
            }
        }
        lines
    }
}

impl Drop for EventsOnStdout {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        detach_quietly(&self.name);
    }
}

/// `explain --json` of instance `name` (which blocks 127.0.0.2 by `rule`, default deny) and of
/// rule flags matches its schema and names rules as `list` does.
fn explain_matches_its_schema(dir: &TempDir, name: &str, rule: &Value) {
    let explained = blocker_ok(&["explain", name, "127.0.0.2:9", "--json"]);
    validate(dir, "explain", &explained, false);
    let explained = json(&explained);
    assert_eq!(
        (&explained["verdict"], &explained["decided_by"]["rule"], &explained["default"]),
        (&"block".into(), rule, &"deny".into()),
        "the vocabulary of list: {explained}"
    );
    for args in [
        &["explain", name, "127.0.0.3"][..],
        &["explain", name, "[::ffff:127.0.0.1]:80", "--proto", "udp"],
        &["explain", "--block", "tcp://localhost:80", "--allow", "127.0.0.0/8", "127.0.0.1:80"],
    ] {
        let explained = blocker_ok(&[args, &["--json"]].concat());
        validate(dir, "explain", &explained, false);
    }
}

/// An instance folder under the pins root with nothing in it and no state, as a crash between
/// the two could leave; removed on drop.
struct PinsOnly(String);

impl PinsOnly {
    fn new() -> Self {
        let name = instance_name();
        let dir = Path::new(cgroup_connect::pins::PIN_ROOT).join(&name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self(name)
    }
}

impl Drop for PinsOnly {
    fn drop(&mut self) {
        detach_quietly(&self.0);
        let _ = std::fs::remove_dir(Path::new(cgroup_connect::pins::PIN_ROOT).join(&self.0));
    }
}

/// The lines of `stream`, read in a thread.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `status`, `list`, `stats`, `explain` and events (enforcing and audit) match their schemas and speak one
/// vocabulary; with `--events -` standard output holds only event lines, from the first line
/// to the last.
#[test]
fn json_outputs_match_their_schemas() {
    require_privileges_and_python!();
    let dir = TempDir::new("formats");
    let list = dir.write("block.txt", "# a list\n127.0.0.4\n");
    let (cg, audit_cg) = (temp_cgroup(), temp_cgroup());
    let mut b = EventsOnStdout::start(&[
        "--cgroup",
        cg.path().to_str().unwrap(),
        "--default",
        "deny",
        "--allow",
        "127.0.0.1",
        "--block",
        "127.0.0.2",
        "--block-list",
        list.to_str().unwrap(),
    ]);
    assert!(b.stderr_line("attached").contains("default deny"));
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.1"))), Allowed);
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked);
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.3"))), Blocked);
    let events = b.stdout_lines(2);
    validate(&dir, "event", &(events.join("\n") + "\n"), true);
    let (by_rule, by_default) = (json(&events[0]), json(&events[1]));
    assert_eq!(
        (&by_rule["verdict"], &by_rule["rule"]),
        (&"blocked".into(), &"block 127.0.0.2".into())
    );
    assert_eq!((&by_default["rule_id"], &by_default["rule"]), (&0.into(), &"default".into()));

    let audit_events = dir.path().join("audit.jsonl");
    let audit = Blocker::start(&[
        "--cgroup",
        audit_cg.path().to_str().unwrap(),
        "--audit",
        "--block",
        "127.0.0.2",
        "--events",
        audit_events.to_str().unwrap(),
    ]);
    assert_eq!(outcome(connect_in(audit_cg.path(), lo("127.0.0.2"))), Allowed);
    let mut audit_text = String::new();
    for _ in 0..200 {
        audit_text = std::fs::read_to_string(&audit_events).unwrap_or_default();
        if audit_text.ends_with('\n') {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    validate(&dir, "event", &audit_text, true);
    assert_eq!(json(audit_text.lines().next().unwrap())["verdict"], "audit_would_block");

    let instances = blocker_ok(&["status", "--json"]);
    validate(&dir, "status", &instances, false);
    let rows = json(&instances);
    let row = rows.as_array().unwrap().iter().find(|r| r["name"] == b.name.as_str()).unwrap();
    assert_eq!((&row["state"], &row["mode"]), (&"running".into(), &"enforce".into()), "{row}");
    let listed = blocker_ok(&["list", &b.name, "--json"]);
    validate(&dir, "list", &listed, false);
    let listed = json(&listed);
    assert_eq!(listed["default"], "deny", "the word of --default: {listed}");
    let rules = listed["rules"].as_array().unwrap();
    let rule =
        |dst: &str| rules.iter().find(|r| r["dst"] == dst).unwrap_or_else(|| panic!("{dst}"));
    assert_eq!(
        (&rule("127.0.0.2")["rule"], &rule("127.0.0.2")["origin"]),
        (&"block 127.0.0.2".into(), &"--block".into())
    );
    assert_eq!(rule("127.0.0.1")["rule"], "allow 127.0.0.1");
    let origin = rule("127.0.0.4")["origin"].as_str().unwrap();
    assert!(origin.ends_with("block.txt:2"), "{listed}");
    let text = blocker_ok(&["list", &b.name]);
    assert!(text.lines().next().unwrap().ends_with(": default deny"), "{text}");
    explain_matches_its_schema(&dir, &b.name, &rule("127.0.0.2")["rule"]);
    let counters = blocker_ok(&["stats", &b.name, "--json"]);
    validate(&dir, "stats", &counters, false);
    let counters = json(&counters);
    assert_eq!(
        (&counters["blocked"], &counters["rules"][0]["rule"]),
        (&2.into(), &"block 127.0.0.2".into())
    );
    let audit_stats = blocker_ok(&["stats", &audit.name, "--json"]);
    validate(&dir, "stats", &audit_stats, false);
    assert_eq!(json(&audit_stats)["audit_would_block"], 1);

    // SIGHUP: the reload line goes to stderr too, and standard output stays JSON lines.
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(i32::try_from(b.child.id()).unwrap(), libc::SIGHUP) };
    assert!(b.stderr_line("reloaded:").contains("default deny"));
    assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.4"))), Blocked);
    validate(&dir, "event", &(b.stdout_lines(1)[0].clone() + "\n"), true);
    // SAFETY: as above.
    unsafe { libc::kill(i32::try_from(b.child.id()).unwrap(), libc::SIGTERM) };
    b.stderr_line("detached from cgroup");
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "blocker did not exit within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rest: Vec<String> = b.stdout.try_iter().collect();
    assert!(rest.is_empty(), "stdout holds more than event lines: {rest:?}");
}

/// An instance with pins but no state (as a crash between the two could leave): `status`
/// shows what it cannot know as null in JSON, valid by the schema, and as - in text.
#[test]
fn status_shows_unknown_values_as_null() {
    require_privileges_and_python!();
    let dir = TempDir::new("status-null");
    let cg = temp_cgroup();
    // Makes the pins root, where the pins-only instance goes.
    let _b = Blocker::start(&["--cgroup", cg.path().to_str().unwrap()]);
    let unknown = PinsOnly::new();
    let instances = blocker_ok(&["status", "--json"]);
    validate(&dir, "status", &instances, false);
    let rows = json(&instances);
    let row = rows.as_array().unwrap().iter().find(|r| r["name"] == unknown.0.as_str()).unwrap();
    assert_eq!(
        (&row["cgroup"], &row["since"], &row["pid"], &row["state"]),
        (&Value::Null, &Value::Null, &Value::Null, &"stale".into())
    );
    let text = blocker_ok(&["status"]);
    let line = text.lines().find(|l| l.starts_with(&format!("{}:", unknown.0))).unwrap();
    assert!(line.contains(" on -,") && line.ends_with("since -"), "{line}");
}

/// One scrape of `http://ADDR/metrics` with `accept`: (Content-Type, body).
fn scrape(addr: &str, accept: Option<&str>) -> (String, String) {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("headers and body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .expect("a Content-Type");
    (content_type, body.to_owned())
}

/// The families `prometheus_client`'s parser for `format` reads from `body`.
fn parse(dir: &TempDir, format: &str, body: &str) -> Vec<Value> {
    let file = dir.write(&format!("metrics.{format}"), body);
    let out = check(&["metrics", format, file.to_str().unwrap()]);
    json(&out).as_array().unwrap().clone()
}

/// The value of the sample `name` with `labels` among `families` (every value here is a whole
/// number).
fn sample(families: &[Value], name: &str, labels: &[(&str, &str)]) -> u64 {
    let found = families
        .iter()
        .flat_map(|f| f["samples"].as_array().unwrap())
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v))
        .unwrap_or_else(|| panic!("no {name} {labels:?} in {families:?}"));
    whole(&found["value"])
}

/// A parsed value (3 or 3.0) as a whole number.
fn whole(value: &Value) -> u64 {
    let v = value.as_f64().unwrap_or_else(|| panic!("not a number: {value}"));
    v.to_string().parse().unwrap_or_else(|_| panic!("not a whole number: {value}"))
}

/// The family `name` among `families`.
fn family<'a>(families: &'a [Value], name: &str) -> &'a Value {
    families
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no family {name} in {families:?}"))
}

/// `/metrics` answers Prometheus' Accept header with `OpenMetrics` and anything else with
/// Prometheus text 0.0.4, each under its own Content-Type, and `prometheus_client`'s parser of
/// each format reads the same values; reloads, table sizes and the instance label are there.
#[test]
fn metrics_parse_in_both_formats() {
    require_privileges_and_python!();
    let dir = TempDir::new("metrics-formats");
    let cg = temp_cgroup();
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let block_list = dir.write("block.txt", "127.0.0.2\n");
    let b = Blocker::start(&[
        "--cgroup",
        cg.path().to_str().unwrap(),
        "--block-list",
        block_list.to_str().unwrap(),
        "--block",
        "udp://[::1]:53",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let line = b.wait_for_line("serving metrics on", Duration::from_secs(10)).expect("metrics");
    let addr = line.trim_start_matches("serving metrics on http://").trim_end_matches("/metrics");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(i32::try_from(b.pid()).unwrap(), libc::SIGHUP) };
    b.wait_for_line("reloaded:", Duration::from_secs(10)).expect("a reloaded line");
    let _ = blocker_ok(&["reload", &b.name]);
    let _ = dir.write("block.txt", "127.0.0.2\n300.1.2.3\n");
    let bad = blocker_output(&["reload", &b.name], None);
    assert_eq!(bad.status.code(), Some(2), "a bad list is refused: {bad:?}");
    // After the reloads, which restart the hits of each rule.
    for _ in 0..3 {
        assert_eq!(outcome(connect_in(cg.path(), lo("127.0.0.2"))), Blocked);
    }

    let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (om_type, om_body) = scrape(addr, Some(prometheus_accept));
    assert_eq!(om_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(om_body.ends_with("# EOF\n"), "{om_body}");
    let (text_type, text_body) = scrape(addr, None);
    assert_eq!(text_type, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(scrape(addr, Some("text/plain;version=0.0.4")).0, text_type);
    assert_eq!(scrape(addr, Some("application/openmetrics-text")).0, om_type);

    let om = parse(&dir, "openmetrics", &om_body);
    let text = parse(&dir, "prometheus", &text_body);
    let me = ("instance", b.name.as_str());
    for families in [om.as_slice(), text.as_slice()] {
        let value = |name, labels: &[(&str, &str)]| sample(families, name, labels);
        assert_eq!(value("cgroup_connect_decisions_total", &[me, ("verdict", "blocked")]), 3);
        assert_eq!(value("cgroup_connect_rule_hits_total", &[me, ("rule", "block 127.0.0.2")]), 3);
        assert_eq!(value("cgroup_connect_events_lost_total", &[me]), 0);
        assert_eq!(value("cgroup_connect_rules", &[me]), 2);
        assert_eq!(value("cgroup_connect_prefixes", &[me, ("family", "ipv6")]), 1);
        assert_eq!(value("cgroup_connect_reloads_total", &[me]), 2);
        assert_eq!(value("cgroup_connect_hostname_refreshes_total", &[me]), 0);
        assert_eq!(value("cgroup_connect_reload_failures_total", &[me]), 1);
        let last = value("cgroup_connect_last_reload_timestamp_seconds", &[me]);
        assert!((started..started + 600).contains(&last), "{last} vs {started}");
        for fam in ["ipv4", "ipv6"] {
            assert!(value("cgroup_connect_table_records", &[me, ("family", fam)]) > 0);
            assert!(value("cgroup_connect_table_bytes", &[me, ("family", fam)]) > 0);
        }
        for f in families {
            let name = f["name"].as_str().unwrap();
            assert!(name.starts_with("cgroup_connect_"), "{f}");
            for s in f["samples"].as_array().unwrap() {
                assert_eq!(s["labels"]["instance"], b.name.as_str(), "{s}");
                if f["type"] == "counter" {
                    assert!(s["name"].as_str().unwrap().ends_with("_total"), "{s}");
                }
            }
        }
    }
    assert_eq!(family(&om, "cgroup_connect_build")["type"], "info");
    assert_eq!(family(&om, "cgroup_connect_table_bytes")["unit"], "bytes");
    assert_eq!(family(&om, "cgroup_connect_last_reload_timestamp_seconds")["unit"], "seconds");
    assert_eq!(family(&text, "cgroup_connect_build_info")["type"], "gauge");
    let version = ("version", env!("CARGO_PKG_VERSION"));
    assert_eq!(sample(&om, "cgroup_connect_build_info", &[me, version]), 1);
    assert_eq!(sample(&text, "cgroup_connect_build_info", &[me, version]), 1);
    // Both formats carry the same families, samples and values.
    let samples = |families: &[Value]| {
        let mut all: Vec<String> = families
            .iter()
            .flat_map(|f| f["samples"].as_array().unwrap())
            .map(|s| format!("{} {} {}", s["name"], s["labels"], whole(&s["value"])))
            .collect();
        all.sort();
        all
    };
    assert_eq!(samples(&om), samples(&text));
}
