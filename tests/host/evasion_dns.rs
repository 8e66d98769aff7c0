//! Evasions through agentd's resolver, end to end: a real upstream DNS server on loopback inside
//! the test, agents started with `agentd launch` asking it through the kernel's steering. Each
//! case asserts what the agent gets (an answer, an errno) and what the log says.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    sync::{Arc, Mutex},
    time::Duration,
};

use agentd_tests::{Daemon, launch_cgroup, wait_until};
use simple_dns::{
    CLASS, Name, Packet, ResourceRecord,
    rdata::{A, AAAA, CNAME, RData},
};

use crate::{
    helper,
    network::{attempts, connections},
};

/// A record the test upstream gives in answer to a question.
#[derive(Clone)]
enum Rec {
    A(&'static str, [u8; 4]),
    Aaaa(&'static str, Ipv6Addr),
    Cname(&'static str, &'static str),
}

/// The test's upstream DNS server, on 127.0.0.2 at a free port. `zone` maps a question's name
/// to the records of the answer (any owner: a record off the question's chain is how a
/// malicious upstream or a spoofer would teach an address). For the name `spoof`, a forged
/// answer giving `forged` comes first, from another socket, then the true one 300 ms later.
struct Upstream {
    address: SocketAddr,
    /// Every name the server was asked for.
    seen: Arc<Mutex<Vec<String>>>,
}

/// The true answer to `query` from `zone`.
fn answer(zone: &[(&'static str, Vec<Rec>)], query: &Packet) -> Option<Vec<u8>> {
    let asked = query.questions.first()?.qname.to_string();
    let mut reply = query.clone().into_reply();
    for (name, records) in zone {
        if *name != asked {
            continue;
        }
        for record in records {
            let (owner, rdata) = match record {
                Rec::A(owner, ip) => (
                    *owner,
                    RData::A(A {
                        address: u32::from_be_bytes(*ip),
                    }),
                ),
                Rec::Aaaa(owner, ip) => (
                    *owner,
                    RData::AAAA(AAAA {
                        address: u128::from(*ip),
                    }),
                ),
                Rec::Cname(owner, target) => {
                    (*owner, RData::CNAME(CNAME(Name::new_unchecked(target))))
                }
            };
            reply.answers.push(ResourceRecord::new(
                Name::new_unchecked(owner),
                CLASS::IN,
                60,
                rdata,
            ));
        }
    }
    reply.build_bytes_vec().ok()
}

fn upstream(
    zone: Vec<(&'static str, Vec<Rec>)>,
    spoof: Option<(&'static str, [u8; 4])>,
) -> Upstream {
    let socket = UdpSocket::bind("127.0.0.2:0").expect("binding the test DNS server");
    let address = socket.local_addr().expect("its address");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let zone = Arc::new(zone);
    serve_tcp(
        TcpListener::bind(address).expect("the test DNS server's TCP port"),
        zone.clone(),
        seen.clone(),
    );
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        while let Ok((len, client)) = socket.recv_from(&mut buffer) {
            let Ok(query) = Packet::parse(&buffer[..len]) else {
                continue;
            };
            let Some(question) = query.questions.first() else {
                continue;
            };
            let asked = question.qname.to_string();
            log.lock().unwrap().push(asked.clone());
            if let Some((name, forged)) = spoof
                && name == asked
            {
                let mut lie = query.clone().into_reply();
                lie.answers.push(ResourceRecord::new(
                    question.qname.clone(),
                    CLASS::IN,
                    60,
                    RData::A(A {
                        address: u32::from_be_bytes(forged),
                    }),
                ));
                let attacker = UdpSocket::bind("127.0.0.2:0").expect("the spoofer's socket");
                let _ = attacker.send_to(&lie.build_bytes_vec().unwrap(), client);
                std::thread::sleep(Duration::from_millis(300));
            }
            if let Some(bytes) = answer(&zone, &query) {
                let _ = socket.send_to(&bytes, client);
            }
        }
    });
    Upstream { address, seen }
}

/// The upstream's DNS over TCP: one length-prefixed query and answer per connection.
fn serve_tcp(
    listener: TcpListener,
    zone: Arc<Vec<(&'static str, Vec<Rec>)>>,
    seen: Arc<Mutex<Vec<String>>>,
) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut len = [0u8; 2];
            if stream.read_exact(&mut len).is_err() {
                continue;
            }
            let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if stream.read_exact(&mut message).is_err() {
                continue;
            }
            let Ok(query) = Packet::parse(&message) else {
                continue;
            };
            if let Some(question) = query.questions.first() {
                seen.lock().unwrap().push(question.qname.to_string());
            }
            if let Some(bytes) = answer(&zone, &query) {
                let len = u16::try_from(bytes.len()).unwrap().to_be_bytes();
                let _ = stream.write_all(&len);
                let _ = stream.write_all(&bytes);
            }
        }
    });
}

impl Upstream {
    fn saw(&self, name: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|seen| seen == name)
    }
}

/// A free port on 127.0.0.1 for this daemon's resolver: other daemons on the machine may
/// hold the default one.
fn free_resolver_port() -> u16 {
    // Free for both UDP and TCP (the resolver listens on both).
    loop {
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|socket| socket.local_addr())
            .expect("a free port")
            .port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn start(policy: &str, upstream: &Upstream, dns: &str) -> Daemon {
    let listen = format!("listen = \"127.0.0.1:{}\"\n{dns}", free_resolver_port());
    Daemon::start_with_dns_settings(policy, &upstream.address.to_string(), &listen, "")
}

/// Runs `helper dns-ask 127.0.0.2 NAME TYPE` as `agent`; returns its output line.
pub(crate) fn ask(daemon: &Daemon, agent: &str, name: &str, qtype: &str) -> String {
    let bin = helper();
    let output = daemon
        .launch(
            agent,
            &[bin.to_str().unwrap(), "dns-ask", "127.0.0.2", name, qtype],
        )
        .output()
        .expect("the asking agent");
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// TCP listeners on `addrs`, kept alive by the caller, and their ports.
fn listeners(addrs: &[&str]) -> (Vec<TcpListener>, Vec<u16>) {
    let listeners: Vec<TcpListener> = addrs
        .iter()
        .map(|addr| TcpListener::bind(addr).expect("listener"))
        .collect();
    let ports = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    (listeners, ports)
}

/// The first TCP connection event to `address`:`port`, waiting for it; `events` keeps what
/// was read (reading takes the lines from the daemon).
fn event_for(
    daemon: &Daemon,
    events: &mut Vec<serde_json::Value>,
    address: &str,
    port: u16,
) -> serde_json::Value {
    let mut found = None;
    wait_until("the connection event", || {
        connections(daemon, events);
        found = events
            .iter()
            .find(|e| e["address"] == address && e["port"] == port && e["protocol"] == "tcp")
            .cloned();
        found.is_some()
    });
    found.expect("waited for")
}

fn default_deny_allowing(agent: &str, domain: &str, more: &str) -> String {
    format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"deny\"\n\
         [[agent.network.rule]]\nid = \"allowed\"\naction = \"allow\"\ndomain = \"{domain}\"\n{more}"
    )
}

#[test]
fn a_spoofed_reply_from_another_socket_is_neither_delivered_nor_learned() {
    if !agentd_tests::sock_diag_available() {
        return;
    }
    let agent = "dns-spoofed";
    let (_listeners, ports) = listeners(&["127.0.0.3:0", "127.0.0.6:0"]);
    let server = upstream(
        vec![("spoofed.test", vec![Rec::A("spoofed.test", [127, 0, 0, 3])])],
        Some(("spoofed.test", [127, 0, 0, 6])),
    );
    let daemon = start(
        &default_deny_allowing(agent, "spoofed.test", ""),
        &server,
        "",
    );
    let _launched = launch_cgroup(agent);
    assert_eq!(
        ask(&daemon, agent, "spoofed.test", "a"),
        "rcode=0 answers=127.0.0.3"
    );
    // The forged address was not learned: default deny holds for it; the true one is allowed.
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.6", ports[1], 1),
        (0, 1, 0)
    );
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.3", ports[0], 1),
        (1, 0, 0)
    );
    let mut events = Vec::new();
    let forged = event_for(&daemon, &mut events, "127.0.0.6", ports[1]);
    assert_eq!(forged["verdict"], "deny");
    assert_eq!(forged["decided_by"], "default");
    let real = event_for(&daemon, &mut events, "127.0.0.3", ports[0]);
    assert_eq!(real["decided_by"], "domain");
    assert_eq!(real["domain"], "spoofed.test");
}

#[test]
fn only_addresses_on_the_questions_cname_chain_are_learned() {
    if !agentd_tests::sock_diag_available() {
        return;
    }
    let agent = "dns-chain";
    let (_listeners, ports) = listeners(&["127.0.0.3:0", "127.0.0.6:0"]);
    let server = upstream(
        vec![(
            "chain.test",
            vec![
                Rec::Cname("chain.test", "edge.cdn.test"),
                Rec::A("edge.cdn.test", [127, 0, 0, 3]),
                // Off the chain: an address for a name nobody asked about.
                Rec::A("unrelated.test", [127, 0, 0, 6]),
            ],
        )],
        None,
    );
    let daemon = start(&default_deny_allowing(agent, "chain.test", ""), &server, "");
    let _launched = launch_cgroup(agent);
    let answer = ask(&daemon, agent, "chain.test", "a");
    assert!(answer.starts_with("rcode=0 answers=127.0.0.3"), "{answer}");
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.3", ports[0], 1),
        (1, 0, 0)
    );
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.6", ports[1], 1),
        (0, 1, 0)
    );
    let mut events = Vec::new();
    let off_chain = event_for(&daemon, &mut events, "127.0.0.6", ports[1]);
    assert_eq!(off_chain["verdict"], "deny");
    assert_eq!(off_chain["decided_by"], "default");
    assert!(off_chain.get("domain").is_none(), "{off_chain}");
    let on_chain = event_for(&daemon, &mut events, "127.0.0.3", ports[0]);
    assert_eq!(on_chain["decided_by"], "domain");
}

#[test]
fn aaaa_answers_are_learned_and_enforced_for_allow_and_deny() {
    if !agentd_tests::sock_diag_available() {
        return;
    }
    let (allowing, denying) = ("dns-v6-allow", "dns-v6-deny");
    let (_listeners, ports) = listeners(&["[::1]:0"]);
    let port = ports[0];
    let server = upstream(
        vec![
            (
                "allowed6.test",
                vec![Rec::Aaaa("allowed6.test", Ipv6Addr::LOCALHOST)],
            ),
            (
                "denied6.test",
                vec![Rec::Aaaa("denied6.test", Ipv6Addr::LOCALHOST)],
            ),
        ],
        None,
    );
    let policy = format!(
        "{}[[agent]]\nname = \"{denying}\"\n[agent.network]\ndefault = \"allow\"\n\
         [[agent.network.rule]]\nid = \"denied\"\naction = \"deny\"\ndomain = \"denied6.test\"\n",
        default_deny_allowing(allowing, "allowed6.test", "")
    );
    let daemon = start(&policy, &server, "");
    let _allowing = launch_cgroup(allowing);
    let _denying = launch_cgroup(denying);
    // Before any lookup, each agent's default decides ::1.
    assert_eq!(
        attempts(&daemon, Some(allowing), "tcp", "::1", port, 1),
        (0, 1, 0)
    );
    assert_eq!(
        ask(&daemon, allowing, "allowed6.test", "aaaa"),
        "rcode=0 answers=::1"
    );
    assert_eq!(
        ask(&daemon, denying, "denied6.test", "aaaa"),
        "rcode=0 answers=::1"
    );
    assert_eq!(
        attempts(&daemon, Some(allowing), "tcp", "::1", port, 1),
        (1, 0, 0)
    );
    assert_eq!(
        attempts(&daemon, Some(denying), "tcp", "::1", port, 1),
        (0, 1, 0)
    );
    let mut events = Vec::new();
    let mut denied = None;
    wait_until("the v6 denial", || {
        connections(&daemon, &mut events);
        denied = events
            .iter()
            .find(|e| e["address"] == "::1" && e["agent"]["name"] == denying)
            .cloned();
        denied.is_some()
    });
    let denied = denied.unwrap();
    assert_eq!(denied["verdict"], "deny");
    assert_eq!(denied["decided_by"], "domain");
    assert_eq!(denied["rule"], format!("{denying}/denied"));
    assert_eq!(denied["domain"], "denied6.test");
    let allowed = events
        .iter()
        .find(|e| {
            e["address"] == "::1" && e["agent"]["name"] == allowing && e["verdict"] == "allow"
        })
        .expect("the allowed v6 connect");
    assert_eq!(allowed["decided_by"], "domain");
    assert_eq!(allowed["domain"], "allowed6.test");
}

#[test]
fn names_no_rule_allows_are_answered_locally_and_never_forwarded() {
    if !agentd_tests::sock_diag_available() {
        return;
    }
    let agent = "dns-unallowed";
    let server = upstream(
        vec![("allowed.test", vec![Rec::A("allowed.test", [127, 0, 0, 3])])],
        None,
    );
    let daemon = start(
        &default_deny_allowing(agent, "allowed.test", ""),
        &server,
        "",
    );
    let _launched = launch_cgroup(agent);
    // NXDOMAIN (3) by default, and the upstream never hears of the name.
    assert_eq!(
        ask(&daemon, agent, "secret-data.tunnel.test", "a"),
        "rcode=3 answers="
    );
    // Bytes that are not DNS get nothing back and go nowhere.
    assert_eq!(ask(&daemon, agent, "-", "a"), "timeout");
    // A name a rule allows is forwarded.
    assert_eq!(
        ask(&daemon, agent, "allowed.test", "a"),
        "rcode=0 answers=127.0.0.3"
    );
    assert!(server.saw("allowed.test"));
    assert!(!server.saw("secret-data.tunnel.test"));
    assert_eq!(server.seen.lock().unwrap().len(), 1, "{:?}", server.seen);

    // REFUSED (5) where the configuration says so.
    let agent = "dns-unallowed-refused";
    let daemon = start(
        &default_deny_allowing(agent, "allowed.test", ""),
        &server,
        "unallowed_names = \"refused\"\n",
    );
    let _launched = launch_cgroup(agent);
    assert_eq!(
        ask(&daemon, agent, "more-data.tunnel.test", "a"),
        "rcode=5 answers="
    );
    assert!(!server.saw("more-data.tunnel.test"));
}

#[test]
fn a_quarantined_agents_queries_are_refused_and_not_forwarded() {
    if !agentd_tests::sock_diag_available() {
        return;
    }
    let agent = "dns-quarantined";
    let server = upstream(
        vec![("allowed.test", vec![Rec::A("allowed.test", [127, 0, 0, 3])])],
        None,
    );
    let policy = format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"allow\"\n\n\
         [network]\nquarantine_allow = [\"127.0.0.2/32\"]\n"
    );
    let daemon = start(&policy, &server, "");
    let _launched = launch_cgroup(agent);
    assert_eq!(
        ask(&daemon, agent, "allowed.test", "a"),
        "rcode=0 answers=127.0.0.3"
    );
    let output = std::process::Command::new(agentd_tests::agentd_bin())
        .args(["quarantine", agent, "--socket"])
        .arg(daemon.admin_socket())
        .output()
        .expect("agentd quarantine");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        ask(&daemon, agent, "exfil.allowed.test", "a"),
        "rcode=5 answers="
    );
    assert!(!server.saw("exfil.allowed.test"));
}

#[test]
fn a_rebinding_answer_cannot_open_a_cidr_the_policy_denies() {
    if !agentd_tests::sock_diag_available() {
        return;
    }
    let agent = "dns-rebinding";
    let (_listeners, ports) = listeners(&["127.0.0.6:0", "127.0.0.3:0"]);
    // 127.0.0.6 stands for 169.254.169.254: the docs' `no-metadata` rule, and an allowed
    // domain whose answer points at it.
    let server = upstream(
        vec![
            ("rebind.test", vec![Rec::A("rebind.test", [127, 0, 0, 6])]),
            ("fine.test", vec![Rec::A("fine.test", [127, 0, 0, 3])]),
        ],
        None,
    );
    let policy = format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"deny\"\n\
         [[agent.network.rule]]\nid = \"allowed\"\naction = \"allow\"\ndomain = \"*.test\"\n\
         [[agent.network.rule]]\nid = \"no-metadata\"\naction = \"deny\"\ncidr = \"127.0.0.6/32\"\n"
    );
    let daemon = start(&policy, &server, "");
    let _launched = launch_cgroup(agent);
    assert_eq!(
        ask(&daemon, agent, "rebind.test", "a"),
        "rcode=0 answers=127.0.0.6"
    );
    assert_eq!(
        ask(&daemon, agent, "fine.test", "a"),
        "rcode=0 answers=127.0.0.3"
    );
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.6", ports[0], 1),
        (0, 1, 0)
    );
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.3", ports[1], 1),
        (1, 0, 0)
    );
    let mut events = Vec::new();
    let denied = event_for(&daemon, &mut events, "127.0.0.6", ports[0]);
    assert_eq!(denied["verdict"], "deny");
    assert_eq!(denied["decided_by"], "rule");
    assert_eq!(denied["rule"], format!("{agent}/no-metadata"));
    let allowed = event_for(&daemon, &mut events, "127.0.0.3", ports[1]);
    assert_eq!(allowed["decided_by"], "domain");
}

#[test]
fn a_domain_rule_that_says_so_overrides_a_cidr_deny() {
    if !agentd_tests::sock_diag_available() {
        return;
    }
    let agent = "dns-override";
    let (_listeners, ports) = listeners(&["127.0.0.6:0"]);
    let server = upstream(
        vec![(
            "internal.test",
            vec![Rec::A("internal.test", [127, 0, 0, 6])],
        )],
        None,
    );
    let policy = format!(
        "[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"deny\"\n\
         [[agent.network.rule]]\nid = \"internal\"\naction = \"allow\"\ndomain = \"internal.test\"\n\
         override_cidr_deny = true\n\
         [[agent.network.rule]]\nid = \"no-internal\"\naction = \"deny\"\ncidr = \"127.0.0.0/29\"\n"
    );
    let daemon = start(&policy, &server, "");
    let _launched = launch_cgroup(agent);
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.6", ports[0], 1),
        (0, 1, 0),
        "the CIDR deny holds before the lookup"
    );
    assert_eq!(
        ask(&daemon, agent, "internal.test", "a"),
        "rcode=0 answers=127.0.0.6"
    );
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.6", ports[0], 1),
        (1, 0, 0)
    );
    let mut events = Vec::new();
    let mut allowed = None;
    wait_until("the allowed connect's event", || {
        connections(&daemon, &mut events);
        allowed = events
            .iter()
            .find(|e| e["address"] == "127.0.0.6" && e["verdict"] == "allow")
            .cloned();
        allowed.is_some()
    });
    let allowed = allowed.unwrap();
    assert_eq!(allowed["decided_by"], "domain");
    assert_eq!(allowed["rule"], format!("{agent}/internal"));
}

/// Runs `helper dns-ask-tcp 127.0.0.2 NAME` as `agent`; returns its output line.
fn ask_tcp(daemon: &Daemon, agent: &str, name: &str) -> String {
    let bin = helper();
    let output = daemon
        .launch(
            agent,
            &[bin.to_str().unwrap(), "dns-ask-tcp", "127.0.0.2", name],
        )
        .output()
        .expect("the asking agent");
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn dns_over_tcp_is_steered_and_judged_like_udp() {
    if !agentd_tests::sock_diag_available() {
        return;
    }
    let agent = "dns-tcp";
    let (_listeners, ports) = listeners(&["127.0.0.3:0"]);
    let server = upstream(
        vec![("allowed.test", vec![Rec::A("allowed.test", [127, 0, 0, 3])])],
        None,
    );
    let daemon = start(
        &default_deny_allowing(agent, "allowed.test", ""),
        &server,
        "",
    );
    let _launched = launch_cgroup(agent);
    // Nothing listens on 127.0.0.2:53 over TCP: only agentd's resolver can answer.
    assert_eq!(
        ask_tcp(&daemon, agent, "allowed.test"),
        "rcode=0 answers=127.0.0.3"
    );
    assert_eq!(
        ask_tcp(&daemon, agent, "exfil.tunnel.test"),
        "rcode=3 answers="
    );
    assert!(server.saw("allowed.test"));
    assert!(!server.saw("exfil.tunnel.test"));
    // The answer over TCP was learned.
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.3", ports[0], 1),
        (1, 0, 0)
    );
    let mut events = Vec::new();
    let allowed = event_for(&daemon, &mut events, "127.0.0.3", ports[0]);
    assert_eq!(allowed["decided_by"], "domain");
    assert_eq!(allowed["domain"], "allowed.test");
    let steered = events
        .iter()
        .find(|e| e["port"] == 53 && e["protocol"] == "tcp")
        .expect("the steered TCP connect's event");
    assert_eq!(steered["decided_by"], "dns");
    assert_eq!(steered["verdict"], "allow");
}

#[test]
fn dns_to_ipv6_servers_is_refused_with_an_event() {
    let agent = "dns-v6-server";
    let server = upstream(Vec::new(), None);
    let policy = format!("[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"allow\"\n");
    let daemon = start(&policy, &server, "");
    let _launched = launch_cgroup(agent);
    // Nothing listens on [::1]:53: without the refusal the connect is ECONNREFUSED (other)
    // and the datagram leaves (ok), unjudged by the resolver.
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "::1", 53, 1),
        (0, 1, 0)
    );
    assert_eq!(
        attempts(&daemon, Some(agent), "udp", "::1", 53, 1),
        (0, 1, 0)
    );
    let mut events = Vec::new();
    wait_until("the refusals' events", || {
        connections(&daemon, &mut events);
        events
            .iter()
            .filter(|e| {
                e["address"] == "::1"
                    && e["port"] == 53
                    && e["verdict"] == "deny"
                    && e["decided_by"] == "dns"
            })
            .count()
            >= 2
    });
}

#[test]
fn the_log_names_a_domain_only_for_the_agent_that_looked_it_up() {
    if !agentd_tests::sock_diag_available() {
        return;
    }
    let (asker, other) = ("dns-log-asker", "dns-log-other");
    let (_listeners, ports) = listeners(&["127.0.0.3:0"]);
    let server = upstream(
        vec![("allowed.test", vec![Rec::A("allowed.test", [127, 0, 0, 3])])],
        None,
    );
    let policy = format!(
        "{}{}",
        default_deny_allowing(asker, "allowed.test", ""),
        default_deny_allowing(other, "allowed.test", "")
    );
    let daemon = start(&policy, &server, "");
    let _asker = launch_cgroup(asker);
    let _other = launch_cgroup(other);
    assert_eq!(
        ask(&daemon, asker, "allowed.test", "a"),
        "rcode=0 answers=127.0.0.3"
    );
    // The answer is the upstream's word for the name, so it applies to the other agent's rule
    // too; but only the agent that asked has a lookup to name in its log.
    assert_eq!(
        attempts(&daemon, Some(other), "tcp", "127.0.0.3", ports[0], 1),
        (1, 0, 0)
    );
    assert_eq!(
        attempts(&daemon, Some(asker), "tcp", "127.0.0.3", ports[0], 1),
        (1, 0, 0)
    );
    let mut events = Vec::new();
    let by = |events: &[serde_json::Value], agent: &str| {
        events
            .iter()
            .find(|e| e["address"] == "127.0.0.3" && e["agent"]["name"] == agent)
            .cloned()
    };
    wait_until("both agents' connection events", || {
        connections(&daemon, &mut events);
        by(&events, asker).is_some() && by(&events, other).is_some()
    });
    let (mine, theirs) = (by(&events, asker).unwrap(), by(&events, other).unwrap());
    assert_eq!(mine["domain"], "allowed.test");
    assert_eq!(theirs["decided_by"], "domain");
    assert!(theirs.get("domain").is_none(), "{theirs}");
}
