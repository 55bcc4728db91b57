//! The DNS forwarder (`run --dns-port`, issue 13): real resolvers in the cgroup (glibc's, through
//! getent and Python's getaddrinfo, and a hand-made TCP query) ask a real dnsmasq, and every
//! address an answer names is judged by the hostname rules on the first connect.
//!
//! Everything runs in a test network namespace: dnsmasq on 192.0.2.53, the blocker (so its
//! forwarder's 127.0.0.1 is the namespace's), and the clients, each in a private mount
//! namespace whose /etc/resolv.conf names dnsmasq. Connects go to addresses on the namespace's
//! `lo` with nothing listening: ECONNREFUSED means allowed, EPERM blocked.
mod common;

use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{Blocker, Netns, TempCgroup, TempDir, temp_cgroup};

const DNSMASQ: &str = "/usr/sbin/dnsmasq";
const PYTHON: &str = "/usr/bin/python3";
/// The forwarder's port in the namespace.
const FORWARDER: &str = "535";

/// dnsmasq's names, as its hosts file (re-read on SIGHUP: the rotation).
const HOSTS: &str = "192.0.2.11 rot.test\n192.0.2.31 wild.test\n192.0.2.32 a.wild.test\n\
                     192.0.2.33 b.c.wild.test\n";

/// Whether dnsmasq and python3 are here; prints why not (fails under CI=true).
fn tools_present() -> bool {
    let missing: Vec<&str> =
        [DNSMASQ, PYTHON].into_iter().filter(|p| !Path::new(p).exists()).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none_or(|v| v != "true"),
        "CI=true: {missing:?} missing (./scripts/setup.sh installs dnsmasq-base)"
    );
    eprintln!("skipping: {missing:?} missing (./scripts/setup.sh installs dnsmasq-base)");
    false
}

/// A process the test started (dnsmasq, a silent resolver), stopped by its pid on drop.
struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A namespace with dnsmasq, a cgroup and a blocker serving it with the forwarder.
struct DnsScene {
    blocker: Option<Blocker>,
    dir: TempDir,
    cgroup: TempCgroup,
    dnsmasq: Dnsmasq,
    netns: Netns,
}

impl DnsScene {
    /// Starts dnsmasq, then `blocker run --dns-port` with `args` (rules and flags).
    fn new(args: &[&str]) -> Self {
        let netns = Netns::new(&["192.0.2.0/24", "2001:db8::/64"]);
        let dir = TempDir::new("dns");
        let hosts = dir.write("hosts", HOSTS);
        let _ = dir.write("resolv.conf", "nameserver 192.0.2.53\noptions timeout:2 attempts:1\n");
        let netns_arg = format!("--net={}", netns.path().display());
        let hosts_arg = format!("--addn-hosts={}", hosts.display());
        let dnsmasq = Command::new("nsenter")
            .args([&netns_arg, DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts"])
            .args([&hosts_arg, "--listen-address=192.0.2.53", "--bind-interfaces"])
            .args(["--local-ttl=1", "--pid-file=", "--user=root", "--cname=alias.test,rot.test"])
            .args(["--address=/deep.wild.test/192.0.2.34"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start dnsmasq: {e}"));
        let dnsmasq = Dnsmasq(dnsmasq);
        let cgroup = temp_cgroup();
        let mut this = Self { blocker: None, dir, cgroup, dnsmasq, netns };
        this.wait_for_dnsmasq();
        this.start(args);
        this
    }

    /// Starts (or, after [`Blocker::stop`], restarts) the blocker in the namespace, with the
    /// test's resolv.conf.
    fn start(&mut self, args: &[&str]) {
        let cg = self.cgroup.path().display().to_string();
        let (resolv, netns) = (self.resolv(), self.netns_arg());
        let mut all = vec!["--cgroup", &cg, "--dns-port", FORWARDER];
        all.extend_from_slice(args);
        let blocker = Blocker::start_under(&wrapper(&resolv, &netns), &all);
        // The stopped one's guard is not dropped: it would detach the pinned instance.
        std::mem::forget(self.blocker.replace(blocker));
    }

    fn netns_arg(&self) -> String {
        format!("--net={}", self.netns.path().display())
    }

    fn resolv(&self) -> String {
        self.dir.path().join("resolv.conf").display().to_string()
    }

    /// Runs `cmd` from the cgroup, in the namespace, with the test's resolv.conf; at most 20 s.
    fn client(&self, cmd: &[&str]) -> Output {
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.cgroup.path().join("cgroup.procs"))
            .unwrap_or_else(|e| panic!("open cgroup.procs: {e}"));
        let fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
        let (resolv, netns) = (self.resolv(), self.netns_arg());
        let mut command = Command::new("timeout");
        command.arg("20").args(wrapper(&resolv, &netns)).args(cmd);
        // SAFETY: the child only writes to a descriptor it inherited (async-signal-safe).
        unsafe {
            command.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let out = command.output().unwrap_or_else(|e| panic!("run {cmd:?} in the cgroup: {e}"));
        drop(procs);
        out
    }

    /// Resolves `name` with getaddrinfo (IPv4) in the cgroup and connects to each address it
    /// got, port 80: `(address, "blocked" | "allowed" | error)` each.
    fn resolve_and_connect(&self, name: &str) -> Vec<(String, String)> {
        let script = "import socket, sys\n\
            for ai in socket.getaddrinfo(sys.argv[1], 80, socket.AF_INET, socket.SOCK_STREAM):\n\
            \x20   s = socket.socket(); ip = ai[4][0]\n\
            \x20   try:\n\
            \x20       s.connect((ip, 80)); print(ip, 'connected')\n\
            \x20   except PermissionError: print(ip, 'blocked')\n\
            \x20   except ConnectionRefusedError: print(ip, 'allowed')\n";
        let out = self.client(&[PYTHON, "-c", script, name]);
        assert!(
            out.status.success(),
            "resolving {name} in the cgroup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
            .collect()
    }

    /// Connects to `ip`:80 from the cgroup without asking DNS.
    fn connect(&self, ip: &str) -> String {
        let script = "import socket, sys\ns = socket.socket()\ntry:\n\
            \x20   s.connect((sys.argv[1], 80)); print('connected')\n\
            except PermissionError: print('blocked')\n\
            except ConnectionRefusedError: print('allowed')\n";
        let out = self.client(&[PYTHON, "-c", script, ip]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The metrics endpoint's URL, from the blocker's `serving metrics on` line.
    fn metrics_url(&self) -> String {
        let blocker = self.blocker.as_ref().expect("started");
        let line = blocker.wait_for_line("serving metrics on", Duration::from_secs(10));
        line.expect("the metrics line").replace("serving metrics on ", "")
    }

    /// The value of the metric `cgroup_connect_NAME`, scraped from the cgroup, in the
    /// namespace where the blocker serves them.
    fn metric(&self, url: &str, name: &str) -> String {
        let code = format!(
            "import urllib.request\nprint(urllib.request.urlopen('{url}').read().decode())"
        );
        let out = self.client(&[PYTHON, "-c", &code]);
        assert!(out.status.success(), "scrape {url}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.starts_with(&format!("cgroup_connect_{name}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .map_or_else(|| panic!("no {name} in\n{text}"), str::to_owned)
    }

    /// Rewrites dnsmasq's hosts file and makes it re-read it.
    fn serve_hosts(&self, hosts: &str) {
        let _ = self.dir.write("hosts", hosts);
        let pid = i32::try_from(self.dnsmasq.0.id()).expect("pid");
        // SAFETY: our own child, still running.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Waits (up to 5 s) until dnsmasq listens on 192.0.2.53:53 in the namespace.
    fn wait_for_dnsmasq(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let listening = Command::new("nsenter")
                .args([&self.netns_arg(), "ss", "-Hlun", "src", "192.0.2.53:53"])
                .output()
                .is_ok_and(|o| !o.stdout.is_empty());
            if listening {
                return;
            }
            assert!(Instant::now() < deadline, "dnsmasq did not start in the test namespace");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `unshare -m -- sh -c SCRIPT RESOLV NETNS`, to be followed by a program and its arguments:
/// runs it in a private mount namespace where /etc/resolv.conf is `resolv`, in `netns`.
fn wrapper<'a>(resolv: &'a str, netns: &'a str) -> [&'a str; 8] {
    let script =
        "mount --bind \"$0\" /etc/resolv.conf && ns=$1 && shift && exec nsenter \"$ns\" -- \"$@\"";
    ["unshare", "-m", "--", "sh", "-c", script, resolv, netns]
}

fn verdicts(got: &[(String, String)]) -> Vec<(&str, &str)> {
    got.iter().map(|(a, v)| (a.as_str(), v.as_str())).collect()
}

#[test]
fn rotated_answers_cnames_and_wildcards_are_judged_on_the_first_connect() {
    require_privileges!();
    if !tools_present() {
        return;
    }
    let scene = DnsScene::new(&["--block", "rot.test", "--block", "*.wild.test"]);
    assert_eq!(verdicts(&scene.resolve_and_connect("rot.test")), [("192.0.2.11", "blocked")]);
    // The answer changes: the new address is blocked on the first connect after it.
    for rotated in ["192.0.2.12", "192.0.2.13"] {
        scene.serve_hosts(&HOSTS.replace("192.0.2.11", rotated));
        assert_eq!(verdicts(&scene.resolve_and_connect("rot.test")), [(rotated, "blocked")]);
    }
    // A CNAME to a blocked name: its final address is the blocked name's.
    scene.serve_hosts(&HOSTS.replace("192.0.2.11", "192.0.2.14"));
    assert_eq!(verdicts(&scene.resolve_and_connect("alias.test")), [("192.0.2.14", "blocked")]);
    // A wildcard covers one label or more, in any case, and not the name itself.
    assert_eq!(verdicts(&scene.resolve_and_connect("a.wild.test")), [("192.0.2.32", "blocked")]);
    assert_eq!(verdicts(&scene.resolve_and_connect("B.C.Wild.Test")), [("192.0.2.33", "blocked")]);
    assert_eq!(
        verdicts(&scene.resolve_and_connect("x.y.deep.wild.test")),
        [("192.0.2.34", "blocked")]
    );
    assert_eq!(verdicts(&scene.resolve_and_connect("wild.test")), [("192.0.2.31", "allowed")]);
    // glibc's own resolver takes the answer: its source reads as 192.0.2.53:53.
    let out = scene.client(&["getent", "ahostsv4", "a.wild.test"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("192.0.2.32"),
        "getent: {out:?}"
    );
    // DNS to an IPv6 resolver is refused: the forwarder would not see it.
    let v6 = scene.client(&[
        PYTHON,
        "-c",
        "import socket\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\ntry:\n    \
         s.sendto(b'x', ('2001:db8::53', 53)); print('sent')\nexcept PermissionError: print('blocked')",
    ]);
    assert_eq!(String::from_utf8_lossy(&v6.stdout).trim(), "blocked");
}

#[test]
fn the_learned_and_evicted_counts_are_in_the_metrics() {
    require_privileges!();
    if !tools_present() {
        return;
    }
    let args = ["--block", "*.wild.test", "--dns-max-learned", "1", "--metrics", "127.0.0.1:0"];
    let scene = DnsScene::new(&args);
    let url = scene.metrics_url();
    let counts = || (scene.metric(&url, "dns_learned"), scene.metric(&url, "dns_evictions_total"));
    assert_eq!(counts(), ("0".into(), "0".into()));
    assert_eq!(verdicts(&scene.resolve_and_connect("a.wild.test")), [("192.0.2.32", "blocked")]);
    assert_eq!(verdicts(&scene.resolve_and_connect("b.c.wild.test")), [("192.0.2.33", "blocked")]);
    // At most one learned address: the first went when the second came.
    assert_eq!(counts(), ("1".into(), "1".into()));
}

#[test]
fn in_deny_mode_the_answered_addresses_are_allowed_and_no_others() {
    require_privileges!();
    if !tools_present() {
        return;
    }
    let scene = DnsScene::new(&[
        "--default",
        "deny",
        "--allow",
        "udp://192.0.2.53:53",
        "--allow",
        "tcp://192.0.2.53:53",
        "--allow",
        "*.wild.test",
    ]);
    assert_eq!(verdicts(&scene.resolve_and_connect("a.wild.test")), [("192.0.2.32", "allowed")]);
    assert_eq!(verdicts(&scene.resolve_and_connect("wild.test")), [("192.0.2.31", "blocked")]);
    scene.serve_hosts(&HOSTS.replace("192.0.2.32", "192.0.2.42"));
    assert_eq!(verdicts(&scene.resolve_and_connect("a.wild.test")), [("192.0.2.42", "allowed")]);
    // A connected socket's send with ancillary data and no address is judged as the DNS call
    // to the allowed resolver (not as one to the forwarder's 127.0.0.1:PORT), and learned.
    let script = "import socket, struct\n\
        q = struct.pack('>HHHHHH', 7, 0x100, 1, 0, 0, 0) + b'\\x01b\\x01c\\x04wild\\x04test\\x00' \
        + struct.pack('>HH', 1, 1)\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        s.connect(('192.0.2.53', 53))\n\
        s.settimeout(5)\n\
        try:\n\
        \x20   s.sendmsg([q], [(socket.IPPROTO_IP, socket.IP_TTL, struct.pack('i', 64))])\n\
        except PermissionError:\n\
        \x20   print('blocked'); raise SystemExit\n\
        a = s.recv(512)\n\
        print('answered' if bytes([192, 0, 2, 33]) in a else 'no address')\n";
    let out = scene.client(&[PYTHON, "-c", script]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "answered", "{out:?}");
    assert_eq!(scene.connect("192.0.2.33"), "allowed", "the answer was learned");
}

#[test]
fn learned_addresses_expire_after_ttl_and_grace() {
    require_privileges!();
    if !tools_present() {
        return;
    }
    let scene = DnsScene::new(&["--block", "*.wild.test", "--dns-grace", "1s"]);
    assert_eq!(verdicts(&scene.resolve_and_connect("a.wild.test")), [("192.0.2.32", "blocked")]);
    // TTL 1 s (dnsmasq's --local-ttl) plus 1 s of grace; bounded at 15 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    while scene.connect("192.0.2.32") != "allowed" {
        assert!(Instant::now() < deadline, "192.0.2.32 still blocked 15 s after its answer");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn dns_over_tcp_is_forwarded_and_learned() {
    require_privileges!();
    if !tools_present() {
        return;
    }
    let scene = DnsScene::new(&["--block", "*.wild.test"]);
    let script = "import socket, struct\n\
        q = struct.pack('>6H', 0x1234, 0x0100, 1, 0, 0, 0) + b'\\x01a\\x04wild\\x04test\\x00' + struct.pack('>HH', 1, 1)\n\
        s = socket.create_connection(('192.0.2.53', 53), timeout=5)\n\
        s.sendall(struct.pack('>H', len(q)) + q)\n\
        n = struct.unpack('>H', s.recv(2))[0]\n\
        a = b''\n\
        while len(a) < n:\n    a += s.recv(n - len(a))\n\
        ip = socket.inet_ntoa(a[-4:])\n\
        c = socket.socket()\n\
        try:\n    c.connect((ip, 80)); v = 'connected'\n\
        except PermissionError: v = 'blocked'\n\
        except ConnectionRefusedError: v = 'allowed'\n\
        print(s.getpeername()[0], s.getpeername()[1], ip, v)\n";
    let out = scene.client(&[PYTHON, "-c", script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "192.0.2.53 53 192.0.2.32 blocked",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_stopped_forwarder_fails_closed_and_a_restart_serves_again() {
    require_privileges!();
    if !tools_present() {
        return;
    }
    let name = common::instance_name();
    let args = ["--block", "*.wild.test", "--name", &name, "--pin"];
    let mut scene = DnsScene::new(&args);
    assert_eq!(verdicts(&scene.resolve_and_connect("a.wild.test")), [("192.0.2.32", "blocked")]);
    let row = common::status_row(&name);
    assert_eq!((&row["dns"], &row["dns_port"]), (&"up".into(), &535.into()), "{row}");
    let (status, _) = scene.blocker.as_mut().expect("started").stop(libc::SIGTERM);
    assert!(status.success(), "blocker exit: {status}");
    assert_eq!(common::status_row(&name)["dns"], "down", "status says the cgroup's DNS fails");
    let text = common::blocker_ok(&["status"]);
    assert!(text.contains("DNS forwarder down"), "{text}");
    let doctor = common::blocker_output(&["doctor"], None);
    let doctor = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.contains(&format!("instance {name}: DNS forwarder down")), "{doctor}");
    // The pinned programs still send DNS to the forwarder, which is gone: no answer.
    let out = scene.client(&["getent", "ahostsv4", "a.wild.test"]);
    assert!(!out.status.success(), "DNS answered without the forwarder: {out:?}");
    // A restart adopts the pinned instance and serves DNS again.
    scene.start(&args);
    assert!(scene.blocker.as_ref().is_some_and(|b| b.attached_line.contains("adopted")));
    assert_eq!(verdicts(&scene.resolve_and_connect("b.c.wild.test")), [("192.0.2.33", "blocked")]);
}

/// A forwarder port that an unprivileged user could bind (and so answer the cgroup's DNS
/// whenever the forwarder is down) is refused before anything attaches.
#[test]
fn an_unprivileged_forwarder_port_is_refused() {
    require_privileges!();
    let cg = temp_cgroup();
    let path = cg.path().to_str().unwrap();
    let out = common::blocker_output(
        &["run", "--cgroup", path, "--dns-port", "5353", "--block", "192.0.2.1"],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(err.contains("--dns-port 5353") && err.contains("choose a port below"), "{err}");
    common::assert_nothing_attached(cg.path());
}

/// A process of the cgroup that floods the forwarder with queries to a resolver that never
/// answers cannot run the blocker out of file descriptors: the forwarder holds at most a
/// bounded number of queries at once, and answers again once they time out.
#[test]
fn a_query_flood_to_a_silent_resolver_is_bounded() {
    require_privileges!();
    if !tools_present() {
        return;
    }
    let scene = DnsScene::new(&["--block", "*.wild.test"]);
    let blocker_pid = scene.blocker.as_ref().expect("started").pid();
    // A resolver that reads nothing: every forwarded query waits for the forwarder's timeout.
    let silent = "import socket, time\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('192.0.2.99', 53))\n\
        time.sleep(60)\n";
    let silent = Dnsmasq(
        Command::new("nsenter")
            .args([&scene.netns_arg(), PYTHON, "-c", silent])
            .spawn()
            .unwrap_or_else(|e| panic!("start the silent resolver: {e}")),
    );
    std::thread::sleep(Duration::from_millis(500));
    // Paced (10 queries, then 5 ms), so the forwarder's socket buffer does not drop them.
    let flood = "import socket, time\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        q = bytes.fromhex('abcd01000001000000000000') + b'\\x01x\\x04test\\x00\\x00\\x01\\x00\\x01'\n\
        for i in range(3000):\n\
        \x20   s.sendto(q, ('192.0.2.99', 53))\n\
        \x20   if i % 10 == 9: time.sleep(0.005)\n\
        print('sent')\n";
    let out = scene.client(&[PYTHON, "-c", flood]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent"), "{out:?}");
    std::thread::sleep(Duration::from_millis(500));
    let fds = std::fs::read_dir(format!("/proc/{blocker_pid}/fd")).map(Iterator::count);
    let fds = fds.unwrap_or_else(|e| panic!("the blocker is gone after the flood: {e}"));
    assert!(fds < 600, "the blocker holds {fds} file descriptors after 3,000 queries");
    drop(silent);
    // The flood's queries time out (5 s); then names resolve and are judged again.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(verdicts(&scene.resolve_and_connect("a.wild.test")), [("192.0.2.32", "blocked")]);
}

/// A new address goes in through the fast path (the map of learned addresses, no swap waited
/// for) and decides as the tables would with it: the hostname rule's /32 over a shorter
/// block, its port rule only for its port, the shorter prefix for the others; and the same
/// once the address is folded into the tables. An address a rule names as a /32 goes the slow
/// way and decides by rank with that rule.
#[test]
fn the_fast_path_decides_as_the_tables_would() {
    require_privileges!();
    if !tools_present() {
        return;
    }
    let scene = DnsScene::new(&[
        "--allow",
        "udp://192.0.2.53:53",
        "--allow",
        "tcp://192.0.2.53:53",
        "--block",
        "192.0.2.0/24",
        "--allow",
        "tcp://*.wild.test:80",
        "--block",
        "192.0.2.33",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let url = scene.metrics_url();
    // Resolved, then ports 80 and 81 at once (before any swap could fold the address in).
    let script = "import socket, sys\n\
        ip = socket.getaddrinfo(sys.argv[1], 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]\n\
        out = [ip]\n\
        for port in (80, 81):\n\
        \x20   s = socket.socket()\n\
        \x20   try:\n\
        \x20       s.connect((ip, port)); out.append('connected')\n\
        \x20   except PermissionError: out.append('blocked')\n\
        \x20   except ConnectionRefusedError: out.append('allowed')\n\
        print(' '.join(out))\n";
    let both = |name: &str| {
        let out = scene.client(&[PYTHON, "-c", script, name]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let fast_writes = || scene.metric(&url, "dns_fast_path_writes_total");
    assert_eq!(both("a.wild.test"), "192.0.2.32 allowed blocked");
    assert_eq!(fast_writes(), "1", "192.0.2.32 went in through the fast path");
    // Folded into the tables (50 ms later): the same verdicts.
    std::thread::sleep(Duration::from_millis(500));
    let script80 = |port: &str| {
        format!(
            "import socket\ns = socket.socket()\ntry:\n    s.connect(('192.0.2.32', {port})); \
             print('connected')\nexcept PermissionError: print('blocked')\n\
             except ConnectionRefusedError: print('allowed')\n"
        )
    };
    for (port, want) in [("80", "allowed"), ("81", "blocked")] {
        let out = scene.client(&[PYTHON, "-c", &script80(port)]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "port {port} folded");
    }
    // 192.0.2.33 is a /32 rule of its own: the slow way, the port rule beats it for port 80.
    assert_eq!(both("b.c.wild.test"), "192.0.2.33 allowed blocked");
    assert_eq!(fast_writes(), "1", "192.0.2.33 went the slow way");
}

/// A restart that adopts the pinned instance keeps enforcing what the forwarder learned
/// before it, until the answer's TTL and the grace period are up.
#[test]
fn a_restart_keeps_the_learned_addresses_until_they_expire() {
    require_privileges!();
    if !tools_present() {
        return;
    }
    let name = common::instance_name();
    // A grace long enough for a stop and a start on a loaded machine.
    let args = ["--block", "*.wild.test", "--name", &name, "--pin", "--dns-grace", "30s"];
    let mut scene = DnsScene::new(&args);
    assert_eq!(verdicts(&scene.resolve_and_connect("a.wild.test")), [("192.0.2.32", "blocked")]);
    let (status, _) = scene.blocker.as_mut().expect("started").stop(libc::SIGTERM);
    assert!(status.success(), "blocker exit: {status}");
    assert_eq!(scene.connect("192.0.2.32"), "blocked", "the pinned instance alone");
    scene.start(&args);
    assert!(scene.blocker.as_ref().is_some_and(|b| b.attached_line.contains("adopted")));
    assert_eq!(scene.connect("192.0.2.32"), "blocked", "kept across the restart");
    // TTL 1 s plus 30 s of grace from the answer; bounded at 60 s.
    let deadline = Instant::now() + Duration::from_mins(1);
    while scene.connect("192.0.2.32") != "allowed" {
        assert!(Instant::now() < deadline, "192.0.2.32 still blocked 60 s after its answer");
        std::thread::sleep(Duration::from_millis(250));
    }
}
