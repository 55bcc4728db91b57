//! Policy files and list files on the real kernel, and their errors: each bad file, line or
//! value ends the run with its location, and nothing is attached.
mod common;

use std::os::unix::fs::PermissionsExt as _;

use common::{
    Outcome::{Allowed, Blocked},
    Probe::{TcpConnect, UdpSendto},
    Scene, TempDir, assert_nothing_attached, blocker_output, temp_cgroup,
};

#[test]
fn toml_policy_with_rules_and_lists() {
    require_privileges!();
    let dir = TempDir::new("policy");
    let _ = dir.write("drop.txt", "# blocked hosts\n192.0.2.7\n\n[2001:db8::/64]:22 # ssh\n");
    let policy = dir.write(
        "policy.toml",
        r#"default = "deny"

[[rule]]
action = "allow"
dst = "192.0.2.0/24"

[[rule]]
action = "allow"
dst = "2001:db8::/64"

[[rule]]
action = "block"
dst = "192.0.2.0/24"
ports = "8000-8999"
proto = "tcp"

[[list]]
action = "block"
path = "drop.txt"
"#,
    );
    let s = Scene::new(
        &["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/64"],
        &["--policy", policy.to_str().unwrap()],
    );
    assert!(s.blocker.attached_line.contains("default deny"), "{}", s.blocker.attached_line);
    s.expect(&[
        (TcpConnect, "192.0.2.1:80", Allowed),
        (TcpConnect, "192.0.2.1:8080", Blocked),
        (UdpSendto, "192.0.2.1:8080", Allowed),
        (TcpConnect, "192.0.2.7:80", Blocked),
        (TcpConnect, "198.51.100.1:80", Blocked),
        (TcpConnect, "[2001:db8::1]:80", Allowed),
        (TcpConnect, "[2001:db8::1]:22", Blocked),
    ]);
}

/// Lists as the Spamhaus, `FireHOL` and `IPsum` projects publish them (samples in tests/data,
/// sources in its README) enforce: one address blocked by each, and a prefix two of them name
/// counts once.
#[test]
fn public_blocklist_formats_enforce() {
    require_privileges!();
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut args = Vec::new();
    for file in ["spamhaus-drop.txt", "firehol_level1.netset", "ipsum.txt"] {
        let path = data.join(file);
        args.push("--block-list".to_owned());
        args.push(
            path.to_str().unwrap_or_else(|| panic!("non-UTF-8 {}", path.display())).to_owned(),
        );
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Scene::new(&["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"], &args);
    // 3 + 3 + 4 lines, 198.51.100.0/24 in both the DROP list and the netset.
    assert!(s.blocker.attached_line.contains(" 9 rules ("), "{}", s.blocker.attached_line);
    s.expect(&[
        (TcpConnect, "192.0.2.70:80", Blocked), // spamhaus-drop.txt: 192.0.2.64/26 ; SBL100001
        (TcpConnect, "192.0.2.20:80", Blocked), // firehol_level1.netset: 192.0.2.16/28
        (TcpConnect, "192.0.2.7:80", Blocked),  // ipsum.txt: 192.0.2.7<TAB>9
        (TcpConnect, "198.51.100.1:80", Blocked), // in two lists
        (TcpConnect, "192.0.2.8:80", Allowed),
        (TcpConnect, "192.0.2.200:80", Allowed),
    ]);
}

/// Runs `blocker run --cgroup <new cgroup> ARGS`, expects exit 2, checks that stderr holds
/// every `wanted` piece and that nothing was attached; returns stderr.
fn refused(args: &[&str], wanted: &[&str]) -> String {
    let cg = temp_cgroup();
    let mut all = vec!["run", "--cgroup", cg.path().to_str().unwrap()];
    all.extend_from_slice(args);
    let out = blocker_output(&all, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    for w in wanted {
        assert!(err.contains(w), "{args:?}: no {w:?} in {err}");
    }
    // One error line; clap may add its usage hints below it.
    let errors =
        err.lines().filter(|l| l.starts_with("error:") || l.starts_with("blocker: error:")).count();
    assert_eq!(errors, 1, "one message: {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
    assert_nothing_attached(cg.path());
    err.into_owned()
}

#[test]
fn bad_policy_files_name_the_line_and_attach_nothing() {
    require_privileges!();
    let dir = TempDir::new("bad-policy");
    let blok = dir.write("policy.toml", "default = \"allow\"\n\n[[rule]]\naction = \"block\"\ndst = \"10.0.0.0/8\"\n\n[[rule]]\naction = \"blok\"\ndst = \"10.0.0.1\"\n");
    refused(&["--policy", blok.to_str().unwrap()], &["policy.toml:8: unknown action \"blok\""]);
    let list = dir.write("list.txt", "192.0.2.1\n192.0.2.300\n");
    refused(&["--block-list", list.to_str().unwrap()], &["list.txt:2:", "192.0.2.300"]);
    let list = dir.write("extra.txt", "192.0.2.1\t7\n192.0.2.2 ; SBL1\n192.0.2.3 block\n");
    refused(&["--block-list", list.to_str().unwrap()], &["extra.txt:3: \"block\" after the rule"]);
    let missing = dir.write("p2.toml", "[[list]]\naction = \"allow\"\npath = \"nope.txt\"\n");
    refused(&["--policy", missing.to_str().unwrap()], &["nope.txt"]);
    refused(&["--block", "10.1.2.3/8"], &["10.1.2.3/8", "10.0.0.0/8"]);
    refused(&["--allow", "[2001:db8::1"], &["brackets"]);
    refused(&["--default", "sometimes"], &["sometimes"]);
}

/// Messages quote at most about 100 characters of a value: a 10 MB list line makes a short
/// message, and a policy's `[[list]]` naming a file that holds no rules (the blocker reads it
/// as root) shows no more than the start of its first line.
#[test]
fn messages_quote_only_the_start_of_long_values() {
    require_privileges!();
    let dir = TempDir::new("long-values");
    let list = dir.write("huge.txt", &format!("192.0.2.1\n{}\n", "x".repeat(10 << 20)));
    let err =
        refused(&["--block-list", list.to_str().unwrap()], &["huge.txt:2:", "(10485760 bytes)"]);
    assert!(err.len() < 1024, "a {} byte message", err.len());

    let secret = format!("root:$6$salt${}:19000:0:99999:7:::", "H".repeat(86));
    let shadow = dir.write("shadow", &format!("{secret}\n"));
    std::fs::set_permissions(&shadow, std::fs::Permissions::from_mode(0o600)).unwrap();
    let policy = dir.write("p.toml", "[[list]]\naction = \"block\"\npath = \"shadow\"\n");
    let err = refused(&["--policy", policy.to_str().unwrap()], &["shadow:1:", &secret[..100]]);
    assert!(!err.contains(&secret[..101]), "more than 100 characters shown: {err}");
}

#[test]
fn over_capacity_is_refused_before_anything_attaches() {
    require_privileges!();
    let dir = TempDir::new("capacity");
    let text = (1..=33).fold(String::new(), |t, p| t + &format!("192.0.2.1:{p}\n"));
    let list = dir.write("ports.txt", &text);
    refused(&["--block-list", list.to_str().unwrap()], &["192.0.2.1/32", "at most 32"]);
}

#[test]
fn unresolvable_hostname_is_refused() {
    require_privileges!();
    // .invalid never resolves (RFC 6761); the hosts file and the resolver both say no.
    let cg = temp_cgroup();
    let out = blocker_output(
        &["run", "--cgroup", cg.path().to_str().unwrap(), "--block", "no-such-host.invalid"],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no-such-host.invalid"), "{err}");
    assert_nothing_attached(cg.path());
}
