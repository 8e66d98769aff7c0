//! Network controls in the kernel, end to end through `agentd run`: servers on loopback, agent
//! processes started with `agentd launch` running the test helper.

use std::{
    net::{TcpListener, UdpSocket},
    process::Command,
    time::Duration,
};

use agentd_tests::{Daemon, boottime_ns, launch_cgroup, wait_until};

use crate::helper;

/// Runs `helper net PROTO ADDR PORT COUNT` as `agent` (or untagged with `None`) and returns
/// (ok, eperm, other).
pub(crate) fn attempts(
    daemon: &Daemon,
    agent: Option<&str>,
    proto: &str,
    addr: &str,
    port: u16,
    count: u32,
) -> (u64, u64, u64) {
    let bin = helper();
    let args = [
        bin.to_str().expect("UTF-8 path"),
        "net",
        proto,
        addr,
        &port.to_string(),
        &count.to_string(),
    ];
    let output = match agent {
        Some(agent) => daemon.launch(agent, &args).output(),
        None => Command::new(args[0]).args(&args[1..]).output(),
    }
    .expect("running the helper");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        counter(&stdout, "ok"),
        counter(&stdout, "eperm"),
        counter(&stdout, "other"),
    )
}

/// A `name=N` counter from the helper's output.
pub(crate) fn counter(stdout: &str, name: &str) -> u64 {
    stdout
        .split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{name}=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("helper printed {stdout:?}"))
}

/// Checks every connection event against the verdict its policy version prescribes. Returns
/// (wrong verdicts, allowed, denied).
fn check_verdicts(
    events: &[serde_json::Value],
    expected: &std::collections::HashMap<u64, &str>,
) -> (usize, u64, u64) {
    let mut wrong = 0;
    let (mut allowed, mut denied) = (0u64, 0u64);
    for event in events {
        let version = event["policy_version"].as_u64().expect("a version");
        let verdict = event["verdict"].as_str().expect("a verdict");
        if expected.get(&version) != Some(&verdict) {
            wrong += 1;
        }
        if verdict == "allow" {
            allowed += 1;
        } else {
            denied += 1;
        }
    }
    (wrong, allowed, denied)
}

/// The JSON connection events agentd printed, parsed.
pub(crate) fn connections(daemon: &Daemon, seen: &mut Vec<serde_json::Value>) {
    seen.extend(
        daemon
            .events()
            .iter()
            .filter(|line| line.contains("\"kind\":\"net\""))
            .map(|line| serde_json::from_str(line).expect("a JSON event")),
    );
}

struct Servers {
    _tcp: Vec<TcpListener>,
    _udp: Vec<UdpSocket>,
    /// (allowed port, denied port) for tcp v4, tcp v6, udp v4, udp v6.
    ports: [(u16, u16); 4],
}

fn servers() -> Servers {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    let mut ports = [(0, 0); 4];
    for (i, addr) in ["127.0.0.1:0", "[::1]:0"].iter().enumerate() {
        let allowed = TcpListener::bind(addr).expect("tcp listener");
        let denied = TcpListener::bind(addr).expect("tcp listener");
        ports[i] = (
            allowed.local_addr().unwrap().port(),
            denied.local_addr().unwrap().port(),
        );
        tcp.extend([allowed, denied]);
        let allowed = UdpSocket::bind(addr).expect("udp socket");
        let denied = UdpSocket::bind(addr).expect("udp socket");
        ports[2 + i] = (
            allowed.local_addr().unwrap().port(),
            denied.local_addr().unwrap().port(),
        );
        udp.extend([allowed, denied]);
    }
    Servers {
        _tcp: tcp,
        _udp: udp,
        ports,
    }
}

fn allow_rule(id: &str, cidr: &str, port: u16, protocol: &str) -> String {
    format!(
        "[[agent.network.rule]]\nid = \"{id}\"\naction = \"allow\"\ncidr = \"{cidr}\"\nports = \"{port}\"\nprotocol = \"{protocol}\"\n"
    )
}

fn policy_for(agent: &str, mode: &str, servers: &Servers) -> String {
    let [tcp4, tcp6, udp4, udp6] = servers.ports;
    format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"deny\"\nmode = \"{mode}\"\n{}{}{}{}",
        allow_rule("tcp4", "127.0.0.1/32", tcp4.0, "tcp"),
        allow_rule("tcp6", "::1/128", tcp6.0, "tcp"),
        allow_rule("udp4", "127.0.0.1/32", udp4.0, "udp"),
        allow_rule("udp6", "::1/128", udp6.0, "udp"),
    )
}

#[test]
fn allowed_connect_succeeds_and_denied_fails_with_eperm_for_tcp_udp_v4_v6() {
    let agent = "net-agent";
    let servers = servers();
    let daemon = Daemon::start(&policy_for(agent, "enforce", &servers));
    let _launched = launch_cgroup(agent);
    let cases = [
        ("tcp", "127.0.0.1", 0),
        ("tcp", "::1", 1),
        ("udp", "127.0.0.1", 2),
        ("udp", "::1", 3),
    ];
    for (proto, addr, i) in cases {
        let (allowed, denied) = servers.ports[i];
        assert_eq!(
            attempts(&daemon, Some(agent), proto, addr, allowed, 3),
            (3, 0, 0),
            "{proto} {addr} allowed port"
        );
        assert_eq!(
            attempts(&daemon, Some(agent), proto, addr, denied, 3),
            (0, 3, 0),
            "{proto} {addr} denied port"
        );
    }
    // Every denied attempt is reported; repeated allowed ones to the same destination once per
    // second (`network.allowed_report_interval_ms`), so at least once each.
    let mut events = Vec::new();
    wait_until("connection events are printed", || {
        connections(&daemon, &mut events);
        events.iter().filter(|e| e["verdict"] == "deny").count() >= 12
            && events.iter().filter(|e| e["verdict"] == "allow").count() >= 4
    });
    let denied = events
        .iter()
        .find(|e| e["verdict"] == "deny")
        .expect("a deny event");
    assert_eq!(denied["agent"]["name"], agent);
    assert_eq!(denied["decided_by"], "default");
    let allowed = events
        .iter()
        .find(|e| e["verdict"] == "allow")
        .expect("an allow event");
    assert_eq!(allowed["decided_by"], "rule");
    assert!(
        allowed["rule"].as_str().unwrap().starts_with("net-agent/"),
        "{allowed}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["hook"] == "sendmsg" && e["address"] == "::1")
    );
}

#[test]
fn audit_mode_allows_and_reports_would_deny() {
    let agent = "audit-agent";
    let servers = servers();
    let daemon = Daemon::start(&policy_for(agent, "audit", &servers));
    let _launched = launch_cgroup(agent);
    let denied_port = servers.ports[0].1;
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.1", denied_port, 2),
        (2, 0, 0)
    );
    let mut events = Vec::new();
    wait_until("the audit events are printed", || {
        connections(&daemon, &mut events);
        events.iter().filter(|e| e["port"] == denied_port).count() >= 2
    });
    for event in events.iter().filter(|e| e["port"] == denied_port) {
        assert_eq!(event["verdict"], "allow", "{event}");
        assert_eq!(event["would_deny"], true, "{event}");
    }
}

/// The kernel caches each verdict: repeated allowed connects to one destination are reported
/// once per `allowed_report_interval_ms`, denials every time, and a new policy (a new cache
/// epoch) decides and reports afresh.
#[test]
fn repeated_allowed_connects_are_reported_once_per_interval_and_denials_every_time() {
    let agent = "repeat-agent";
    let servers = servers();
    let policy = policy_for(agent, "enforce", &servers);
    let daemon =
        Daemon::start_with_config(&policy, "[network]\nallowed_report_interval_ms = 600000\n");
    let _launched = launch_cgroup(agent);
    let (allowed_port, denied_port) = servers.ports[0];
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.1", allowed_port, 5),
        (5, 0, 0)
    );
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.1", denied_port, 5),
        (0, 5, 0)
    );
    let mut events = Vec::new();
    let on = |events: &[serde_json::Value], port: u16| {
        events
            .iter()
            .filter(|e| e["port"] == port)
            .cloned()
            .collect::<Vec<_>>()
    };
    wait_until(
        "the denials and the first allowed connect are printed",
        || {
            connections(&daemon, &mut events);
            on(&events, denied_port).len() >= 5 && !on(&events, allowed_port).is_empty()
        },
    );
    // Give any further (wrong) reports time to arrive.
    std::thread::sleep(Duration::from_millis(500));
    connections(&daemon, &mut events);
    let allowed = on(&events, allowed_port);
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    assert_eq!(allowed[0]["verdict"], "allow");
    assert_eq!(on(&events, denied_port).len(), 5);

    // The same rules again, as a new version: the cached verdicts are of the old epoch.
    let output = daemon.apply(&policy);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.1", allowed_port, 3),
        (3, 0, 0)
    );
    wait_until(
        "the allowed connect under the new version is printed",
        || {
            connections(&daemon, &mut events);
            on(&events, allowed_port).len() >= 2
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    connections(&daemon, &mut events);
    let allowed = on(&events, allowed_port);
    assert_eq!(allowed.len(), 2, "{allowed:?}");
    assert_ne!(
        allowed[0]["policy_version"], allowed[1]["policy_version"],
        "{allowed:?}"
    );
}

#[test]
fn untagged_processes_are_unaffected() {
    let agent = "strict-agent";
    let servers = servers();
    let daemon = Daemon::start(&policy_for(agent, "enforce", &servers));
    let denied_port = servers.ports[0].1;
    assert_eq!(
        attempts(&daemon, None, "tcp", "127.0.0.1", denied_port, 3),
        (3, 0, 0)
    );
    assert_eq!(
        attempts(&daemon, None, "udp", "::1", servers.ports[3].1, 3),
        (3, 0, 0)
    );
    let mut events = Vec::new();
    connections(&daemon, &mut events);
    assert!(
        events.is_empty(),
        "untagged connections were logged: {events:?}"
    );
}

#[test]
fn blocklist_denies_even_where_the_agent_allows_and_alerts() {
    let agent = "open-agent";
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().unwrap().port();
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"allow\"\n{}\n[network]\nblocklist = [\"127.0.0.1/32\"]\n",
        allow_rule("everything-local", "127.0.0.0/8", port, "tcp")
    ));
    let _launched = launch_cgroup(agent);
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.1", port, 1),
        (0, 1, 0)
    );
    let mut events = Vec::new();
    wait_until("the blocklist event is printed", || {
        connections(&daemon, &mut events);
        !events.is_empty()
    });
    assert_eq!(events[0]["decided_by"], "blocklist");
    assert_eq!(events[0]["alert"], "threat-intel");
    assert_eq!(events[0]["rule"], "blocklist:127.0.0.1/32");
}

#[test]
fn quarantine_takes_effect_on_the_next_connect() {
    let agent = "doomed-agent";
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().unwrap().port();
    let exempt = TcpListener::bind("127.0.0.2:0").expect("listener on 127.0.0.2");
    let exempt_port = exempt.local_addr().unwrap().port();
    let daemon = Daemon::start(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"allow\"\n\n[network]\nquarantine_allow = [\"127.0.0.2/32\"]\n"
    ));
    let _launched = launch_cgroup(agent);
    let dir = tempfile::tempdir().expect("temporary directory");
    let stop = dir.path().join("stop");
    let bin = helper();
    let looping = daemon
        .launch(
            agent,
            &[
                bin.to_str().unwrap(),
                "net-until-denied",
                "tcp",
                "127.0.0.1",
                &port.to_string(),
                stop.to_str().unwrap(),
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the connecting agent");
    let mut events = Vec::new();
    // The first connect is reported (repeats only once a second). Quarantine at once: the
    // listener never accepts, so once its backlog is full the loop's connects would stall.
    wait_until("the agent connects", || {
        connections(&daemon, &mut events);
        !events.is_empty()
    });
    let output = Command::new(agentd_tests::agentd_bin())
        .args(["quarantine", agent, "--socket"])
        .arg(&daemon.admin)
        .output()
        .expect("agentd quarantine");
    let quarantined_at = boottime_ns();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result = looping
        .wait_with_output()
        .expect("the agent stops at its first denied connect");
    let _ = std::fs::write(&stop, "");
    assert!(String::from_utf8_lossy(&result.stdout).contains("denied"));

    // The exception still works while quarantined.
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.2", exempt_port, 1),
        (1, 0, 0)
    );
    wait_until("every event is printed", || {
        connections(&daemon, &mut events);
        events.iter().any(|e| e["port"] == exempt_port)
    });
    for event in events
        .iter()
        .filter(|e| e["ktime_ns"].as_u64().unwrap() > quarantined_at)
    {
        assert_eq!(event["decided_by"], "quarantine", "{event}");
        let expected = if event["port"] == exempt_port {
            "allow"
        } else {
            "deny"
        };
        assert_eq!(event["verdict"], expected, "{event}");
    }
}

#[test]
fn policy_swap_under_load_gives_no_wrong_verdicts() {
    let agent = "swap-agent";
    // UDP connects: the kernel hook runs, no packet is sent, so the agent can go fast.
    let listener = UdpSocket::bind("127.0.0.1:0").expect("a port to aim at");
    let port = listener.local_addr().unwrap().port();
    let policy = |action: &str| {
        format!(
            "[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"allow\"\n[[agent.network.rule]]\nid = \"the-port\"\naction = \"{action}\"\ncidr = \"127.0.0.1/32\"\nports = \"{port}\"\n"
        )
    };
    // Every allowed call is reported too, so that each one's verdict can be checked: this is
    // also the test that a policy swap leaves no cached verdict of the old policy in use.
    let daemon = Daemon::start_with_config(
        &policy("allow"),
        "[network]\nallowed_report_interval_ms = 0\n",
    );
    let _launched = launch_cgroup(agent);
    drop(listener);
    let connects: u32 = std::env::var("AGENTD_SWAP_CONNECTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    let rate = std::env::var("AGENTD_SWAP_RATE").unwrap_or_else(|_| "10000".to_owned());
    let bin = helper();
    let mut load = daemon
        .launch(
            agent,
            &[
                bin.to_str().unwrap(),
                "net",
                "udp-connect",
                "127.0.0.1",
                &port.to_string(),
                &connects.to_string(),
                &rate,
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the connecting agent");
    let started = std::time::Instant::now();

    // Swap between allow and deny while the agent connects; remember what each version says.
    let mut expected = std::collections::HashMap::new();
    expected.insert(1u64, "allow");
    let mut swaps = 0;
    let mut events = Vec::new();
    // Swap for as long as the agent connects.
    while load.try_wait().expect("polling the agent").is_none() {
        let action = if swaps % 2 == 0 { "deny" } else { "allow" };
        let output = daemon.apply(&policy(action));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let version: u64 = stdout
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("apply printed {stdout:?}"));
        expected.insert(version, action);
        swaps += 1;
        connections(&daemon, &mut events);
    }
    let output = load.wait_with_output().expect("the agent finishes");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let (ok, eperm) = (counter(&stdout, "ok"), counter(&stdout, "eperm"));
    assert_eq!(ok + eperm, u64::from(connects), "{stdout}");
    // Every connect is either printed or counted as lost by the kernel, never silently gone.
    wait_until(
        "every connection event is printed or counted as dropped",
        || {
            connections(&daemon, &mut events);
            events.len() as u64 + daemon.status().events_dropped >= ok + eperm
        },
    );
    let dropped = daemon.status().events_dropped;
    let (wrong, allowed, denied) = check_verdicts(&events, &expected);
    eprintln!(
        "{connects} connects in {elapsed:?} ({:.0}/s) across {swaps} swaps: {ok} allowed, {eperm} denied; {} events, {dropped} dropped",
        f64::from(connects) / elapsed.as_secs_f64(),
        events.len()
    );
    assert_eq!(
        wrong, 0,
        "connections decided against a policy version that says otherwise"
    );
    if dropped == 0 {
        assert_eq!(
            (allowed, denied),
            (ok, eperm),
            "the events agree with what the agent saw"
        );
    }
    assert!(
        ok > 0 && eperm > 0,
        "the swaps happened while the agent connected: {stdout}"
    );
}

#[test]
fn bad_network_policy_is_refused_and_the_previous_stays() {
    let agent = "steady-agent";
    let servers = servers();
    let daemon = Daemon::start(&policy_for(agent, "enforce", &servers));
    let _launched = launch_cgroup(agent);
    let output = daemon.apply(&format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"allow\"\n\
         [[agent.network.rule]]\nid = \"a\"\naction = \"deny\"\ncidr = \"10.0.0.300/8\"\n\
         [[agent.network.rule]]\nid = \"b\"\naction = \"deny\"\nports = \"70000\"\n\
         [network]\nblocklist = [\"not-an-ip\"]\n"
    ));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for field in [
        "agent[0].network.rule[0].cidr",
        "agent[0].network.rule[1].ports",
        "network.blocklist[0]",
    ] {
        assert!(stderr.contains(field), "missing {field} in {stderr}");
    }
    assert_eq!(
        attempts(
            &daemon,
            Some(agent),
            "tcp",
            "127.0.0.1",
            servers.ports[0].1,
            1
        ),
        (0, 1, 0)
    );
    assert_eq!(daemon.status().network_version, 1);
}

/// Runs `helper resolve-connect 127.0.0.2 NAME PORT` as `agent` and returns its output.
fn resolve_connect(daemon: &Daemon, agent: &str, name: &str, port: u16) -> String {
    let bin = helper();
    let output = daemon
        .launch(
            agent,
            &[
                bin.to_str().unwrap(),
                "resolve-connect",
                "127.0.0.2",
                name,
                &port.to_string(),
            ],
        )
        .output()
        .expect("the resolving agent");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The upstream DNS server for the test, on `127.0.0.2` at a free port, answering A queries
/// from `records`. Agents ask `127.0.0.2:53`, where nothing listens: only agentd's steering to
/// its resolver, which forwards here, can answer them.
fn dns_server(records: &[(&str, [u8; 4])]) -> std::net::SocketAddr {
    use simple_dns::{
        CLASS, Packet, ResourceRecord,
        rdata::{A, RData},
    };
    let socket = UdpSocket::bind("127.0.0.2:0").expect("binding the test DNS server");
    let address = socket.local_addr().expect("its address");
    let records: Vec<(String, [u8; 4])> =
        records.iter().map(|(n, a)| ((*n).to_owned(), *a)).collect();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        while let Ok((len, client)) = socket.recv_from(&mut buffer) {
            let Ok(query) = Packet::parse(&buffer[..len]) else {
                continue;
            };
            let mut reply = query.clone().into_reply();
            for question in &query.questions {
                let asked = question.qname.to_string();
                for (name, ip) in &records {
                    if *name == asked {
                        reply.answers.push(ResourceRecord::new(
                            question.qname.clone(),
                            CLASS::IN,
                            60,
                            RData::A(A {
                                address: u32::from_be_bytes(*ip),
                            }),
                        ));
                    }
                }
            }
            if let Ok(bytes) = reply.build_bytes_vec() {
                let _ = socket.send_to(&bytes, client);
            }
        }
    });
    address
}

/// The DNS tests' world: `allowed.test` is 127.0.0.3 and `other.test` 127.0.0.4 on the test
/// DNS server, and a TCP listener on each of 127.0.0.3, .4 and .5. Returns the server's
/// address, the listeners (keep them alive) and their ports in that order.
fn dns_fixture() -> (std::net::SocketAddr, Vec<TcpListener>, Vec<u16>) {
    let server = dns_server(&[
        ("allowed.test", [127, 0, 0, 3]),
        ("other.test", [127, 0, 0, 4]),
    ]);
    let listeners: Vec<TcpListener> = ["127.0.0.3:0", "127.0.0.4:0", "127.0.0.5:0"]
        .iter()
        .map(|addr| TcpListener::bind(addr).expect("listener"))
        .collect();
    let ports = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    (server, listeners, ports)
}

#[test]
fn dns_rule_allows_the_resolved_address_and_nothing_else() {
    if !agentd_tests::sock_diag_available() {
        return;
    }
    let agent = "dns-agent";
    let (server, _listeners, ports) = dns_fixture();
    let (port, others) = (ports[0], &ports[1..]);
    let daemon = Daemon::start_with_dns(
        &format!(
            "[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"deny\"\n\
             [[agent.network.rule]]\nid = \"allowed\"\naction = \"allow\"\ndomain = \"allowed.test\"\n"
        ),
        &server.to_string(),
        "",
    );
    let _launched = launch_cgroup(agent);
    let run = |name: &str, port: u16| resolve_connect(&daemon, agent, name, port);
    // The answer comes back as from the server the agent asked, through agentd's resolver.
    let allowed = run("allowed.test", port);
    assert!(
        allowed.contains("resolved=127.0.0.3 from=127.0.0.2:53 ok"),
        "{allowed}"
    );
    // A name no rule allows is not even resolved (evasion_dns.rs), and its address, used
    // literally, is denied.
    assert_eq!(
        crate::evasion_dns::ask(&daemon, agent, "other.test", "a"),
        "rcode=3 answers="
    );
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.4", others[0], 1),
        (0, 1, 0)
    );
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.5", others[1], 1),
        (0, 1, 0)
    );

    let mut events = Vec::new();
    wait_until("the connection events are printed", || {
        connections(&daemon, &mut events);
        events.iter().filter(|e| e["protocol"] == "tcp").count() >= 3
    });
    let allowed = events
        .iter()
        .find(|e| e["address"] == "127.0.0.3")
        .expect("the allowed connect");
    assert_eq!(allowed["domain"], "allowed.test");
    assert_eq!(allowed["decided_by"], "domain");
    assert_eq!(allowed["rule"], "dns-agent/allowed");
    assert!(
        events
            .iter()
            .any(|e| e["decided_by"] == "dns" && e["port"] == 53)
    );
    let other = events
        .iter()
        .find(|e| e["address"] == "127.0.0.4")
        .expect("the denied connect");
    assert_eq!(other["verdict"], "deny");
}

#[test]
fn category_and_named_destination_rules_apply() {
    if !agentd_tests::sock_diag_available() {
        return;
    }
    // Default allow: under default deny a name only a deny rule matches is not resolved at
    // all, and this test is about the deny rule applying to its address.
    let agent = "category-agent";
    let (server, _listeners, ports) = dns_fixture();
    let dir = tempfile::tempdir().expect("temporary directory");
    let categories = dir.path().join("categories.txt");
    std::fs::write(
        &categories,
        "allowed.test ai-apis\nother.test file-sharing\n",
    )
    .expect("categories");
    let daemon = Daemon::start_with_dns(
        &format!(
            "[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"allow\"\n\
             [[agent.network.rule]]\nid = \"ai\"\naction = \"allow\"\ncategory = \"ai-apis\"\n\
             [[agent.network.rule]]\nid = \"no-sharing\"\naction = \"deny\"\ncategory = \"file-sharing\"\n\
             [[agent.network.rule]]\nid = \"mcp\"\naction = \"allow\"\ndestination = \"files-mcp\"\n\
             [[network.destination]]\nname = \"files-mcp\"\ncidrs = [\"127.0.0.5/32\"]\n"
        ),
        &server.to_string(),
        &format!(
            "[network]\ncategories_file = \"{}\"\n",
            categories.display()
        ),
    );
    let _launched = launch_cgroup(agent);
    assert!(resolve_connect(&daemon, agent, "allowed.test", ports[0]).contains(" ok"));
    assert!(resolve_connect(&daemon, agent, "other.test", ports[1]).contains(" eperm"));
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.5", ports[2], 1),
        (1, 0, 0)
    );
    let mut events = Vec::new();
    wait_until("the connection events are printed", || {
        connections(&daemon, &mut events);
        events.iter().filter(|e| e["protocol"] == "tcp").count() >= 3
    });
    let rule_of = |address: &str| {
        events
            .iter()
            .find(|e| e["address"] == address)
            .map(|e| e["rule"].clone())
    };
    assert_eq!(rule_of("127.0.0.3"), Some("category-agent/ai".into()));
    assert_eq!(
        rule_of("127.0.0.4"),
        Some("category-agent/no-sharing".into())
    );
    assert_eq!(rule_of("127.0.0.5"), Some("category-agent/mcp".into()));
}
