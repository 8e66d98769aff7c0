//! Network evasions a tagged agent could try against destination rules (docs/network.md,
//! "Evasions we decide"): other spellings of an address, protocols of the UDP family, source
//! routes and raw sockets. Each case asserts the errno AND the event; each passed before the
//! hooks decided it.

use std::{
    net::{TcpListener, UdpSocket},
    process::Command,
};

use agentd_tests::{Daemon, launch_cgroup, wait_until};

use crate::{helper, network::attempts};

/// Runs `helper evade ARGS` as `agent` (or untagged with `None`); returns its outcome word.
fn evade(daemon: &Daemon, agent: Option<&str>, args: &[&str]) -> String {
    let bin = helper();
    let mut all = vec![bin.to_str().expect("UTF-8 path"), "evade"];
    all.extend_from_slice(args);
    let output = match agent {
        Some(agent) => daemon.launch(agent, &all).output(),
        None => Command::new(all[0]).args(&all[1..]).output(),
    }
    .expect("running the helper");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Waits for a network event that `matches`, collecting what agentd prints into `seen`.
fn net_event(
    daemon: &Daemon,
    seen: &mut Vec<serde_json::Value>,
    what: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_until(what, || {
        seen.extend(
            daemon
                .events()
                .iter()
                .filter(|line| line.contains("\"kind\":\"net\""))
                .map(|line| serde_json::from_str(line).expect("a JSON event")),
        );
        seen.iter().any(&matches)
    });
    seen.iter()
        .find(|e| matches(e))
        .cloned()
        .expect("found above")
}

fn agent_policy(agent: &str, network: &str) -> String {
    format!("[[agent]]\nname = \"{agent}\"\n[agent.network]\ndefault = \"allow\"\n{network}")
}

fn deny_rule(id: &str, cidr: &str, port: u16, protocol: &str) -> String {
    format!(
        "[[agent.network.rule]]\nid = \"{id}\"\naction = \"deny\"\ncidr = \"{cidr}\"\nports = \"{port}\"\nprotocol = \"{protocol}\"\n"
    )
}

/// An `AF_INET6` socket naming `::ffff:a.b.c.d` reaches the IPv4 address: the IPv4 rules and the
/// blocklist decide it, and the event names the IPv4 destination.
#[test]
fn v4_mapped_v6_destination_is_decided_by_v4_rules_and_blocklist() {
    let agent = "mapped-agent";
    let denied = TcpListener::bind("127.0.0.3:0").expect("listener on 127.0.0.3");
    let blocked = TcpListener::bind("127.0.0.4:0").expect("listener on 127.0.0.4");
    let udp = UdpSocket::bind("127.0.0.3:0").expect("udp socket on 127.0.0.3");
    let (denied_port, blocked_port) = (
        denied.local_addr().unwrap().port(),
        blocked.local_addr().unwrap().port(),
    );
    let udp_port = udp.local_addr().unwrap().port();
    let policy = format!(
        "{}[network]\nblocklist = [\"127.0.0.4/32\"]\n",
        agent_policy(
            agent,
            &format!(
                "{}{}",
                deny_rule("tcp", "127.0.0.3/32", denied_port, "tcp"),
                deny_rule("udp", "127.0.0.3/32", udp_port, "udp")
            )
        )
    );
    let daemon = Daemon::start(&policy);
    let _launched = launch_cgroup(agent);
    // The same destinations through an AF_INET socket, as the baseline.
    assert_eq!(
        attempts(&daemon, Some(agent), "tcp", "127.0.0.3", denied_port, 1),
        (0, 1, 0)
    );
    for (proto, addr, port) in [
        ("tcp", "::ffff:127.0.0.3", denied_port),
        ("udp-connect", "::ffff:127.0.0.3", udp_port),
        ("tcp", "::ffff:127.0.0.4", blocked_port),
    ] {
        assert_eq!(
            attempts(&daemon, Some(agent), proto, addr, port, 2),
            (0, 2, 0),
            "{proto} {addr}:{port}"
        );
    }
    let mut seen = Vec::new();
    for (port, decided_by) in [
        (denied_port, "rule"),
        (udp_port, "rule"),
        (blocked_port, "blocklist"),
    ] {
        let event = net_event(&daemon, &mut seen, "the mapped deny event", |e| {
            e["port"] == port && e["address_form"] == "v4_mapped"
        });
        assert_eq!(event["verdict"], "deny", "{event}");
        assert_eq!(event["hook"], "connect", "{event}");
        assert_eq!(event["decided_by"], decided_by, "{event}");
        let want = if port == blocked_port {
            "127.0.0.4"
        } else {
            "127.0.0.3"
        };
        assert_eq!(event["address"], want, "{event}");
    }
}

/// `0.0.0.0` and `::` reach the local host: a rule on `127.0.0.1` or `::1` decides them.
#[test]
fn unspecified_destinations_are_decided_as_loopback_in_both_families() {
    let agent = "any-agent";
    let v4 = TcpListener::bind("127.0.0.1:0").expect("listener");
    let v6 = TcpListener::bind("[::1]:0").expect("listener");
    let (port4, port6) = (
        v4.local_addr().unwrap().port(),
        v6.local_addr().unwrap().port(),
    );
    let policy = agent_policy(
        agent,
        &format!(
            "{}{}",
            deny_rule("loop4", "127.0.0.0/8", port4, "tcp"),
            deny_rule("loop6", "::1/128", port6, "tcp")
        ),
    );
    let daemon = Daemon::start(&policy);
    let _launched = launch_cgroup(agent);
    for (addr, port) in [("0.0.0.0", port4), ("::", port6), ("::ffff:0.0.0.0", port4)] {
        assert_eq!(
            attempts(&daemon, Some(agent), "tcp", addr, port, 1),
            (0, 1, 0),
            "{addr}:{port}"
        );
    }
    let mut seen = Vec::new();
    for (port, want) in [(port4, "127.0.0.1"), (port6, "::1")] {
        let event = net_event(&daemon, &mut seen, "the unspecified deny event", |e| {
            e["port"] == port && e["address_form"] == "unspecified"
        });
        assert_eq!(event["verdict"], "deny", "{event}");
        assert_eq!(event["address"], want, "{event}");
        assert_eq!(event["decided_by"], "rule", "{event}");
    }
}

/// UDP-Lite is UDP for a `protocol = "udp"` rule.
#[test]
fn udplite_datagram_is_denied_by_a_udp_rule() {
    let agent = "udplite-agent";
    let port = UdpSocket::bind("127.0.0.1:0")
        .expect("a port")
        .local_addr()
        .unwrap()
        .port();
    let daemon = Daemon::start(&agent_policy(
        agent,
        &deny_rule("udp", "127.0.0.1/32", port, "udp"),
    ));
    let _launched = launch_cgroup(agent);
    let port_text = port.to_string();
    assert_eq!(
        evade(&daemon, Some(agent), &["udplite", "127.0.0.1", &port_text]),
        "eperm"
    );
    assert_eq!(
        evade(&daemon, None, &["udplite", "127.0.0.1", &port_text]),
        "ok",
        "untagged processes are unaffected"
    );
    let mut seen = Vec::new();
    let event = net_event(&daemon, &mut seen, "the UDP-Lite deny event", |e| {
        e["port"] == port && e["protocol"] == "udplite"
    });
    assert_eq!(event["verdict"], "deny", "{event}");
    assert_eq!(event["hook"], "sendmsg", "{event}");
    assert_eq!(event["decided_by"], "rule", "{event}");
}

/// A raw socket of a tagged process is refused unless its agent's `raw_sockets` allows it, in
/// both families; an untagged process keeps its raw sockets.
#[test]
fn raw_sockets_are_denied_by_default_and_allowed_by_the_policy_field() {
    let (denied, allowed) = ("raw-denied-agent", "raw-allowed-agent");
    let policy = format!(
        "{}{}raw_sockets = \"allow\"\n",
        agent_policy(denied, ""),
        agent_policy(allowed, "")
    );
    let daemon = Daemon::start(&policy);
    let _denied_cgroup = launch_cgroup(denied);
    let _allowed_cgroup = launch_cgroup(allowed);
    let (inet, inet6, raw) = (
        libc::AF_INET.to_string(),
        libc::AF_INET6.to_string(),
        libc::SOCK_RAW.to_string(),
    );
    let (icmp, ipproto_raw) = (
        libc::IPPROTO_ICMP.to_string(),
        libc::IPPROTO_RAW.to_string(),
    );
    let icmp4 = ["socket", inet.as_str(), raw.as_str(), icmp.as_str()];
    let raw6 = ["socket", inet6.as_str(), raw.as_str(), ipproto_raw.as_str()];
    assert_eq!(evade(&daemon, Some(denied), &icmp4), "eperm");
    assert_eq!(evade(&daemon, Some(denied), &raw6), "eperm");
    assert_eq!(evade(&daemon, Some(allowed), &icmp4), "ok");
    assert_eq!(evade(&daemon, None, &icmp4), "ok", "untagged");
    let mut seen = Vec::new();
    for (agent, verdict, protocol) in [
        (denied, "deny", "icmp"),
        (denied, "deny", "raw"),
        (allowed, "allow", "icmp"),
    ] {
        let event = net_event(&daemon, &mut seen, "the raw socket event", |e| {
            e["hook"] == "socket" && e["agent"]["name"] == agent && e["protocol"] == protocol
        });
        assert_eq!(event["verdict"], verdict, "{event}");
        assert_eq!(event["decided_by"], "raw_sockets", "{event}");
    }
}

/// Sets `net.ipv4.ping_group_range` for the test and restores it when dropped.
struct PingGroupRange(String);

const PING_GROUP_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

impl PingGroupRange {
    fn allow_all() -> Self {
        let old = std::fs::read_to_string(PING_GROUP_RANGE).expect("reading ping_group_range");
        std::fs::write(PING_GROUP_RANGE, "0 2147483647").expect("setting ping_group_range");
        Self(old)
    }
}

impl Drop for PingGroupRange {
    fn drop(&mut self) {
        let _ = std::fs::write(PING_GROUP_RANGE, self.0.trim());
    }
}

/// ICMP ping sockets need no privilege, and `sendto` on them runs no `sock_addr` hook: the
/// egress check decides their echo requests by destination, by `icmp` rules and by rules for
/// any protocol.
#[test]
fn ping_socket_to_a_denied_address_is_refused() {
    let agent = "ping-agent";
    let _range = PingGroupRange::allow_all();
    let policy = agent_policy(
        agent,
        "[[agent.network.rule]]\nid = \"no-ping\"\naction = \"deny\"\ncidr = \"127.0.0.5/32\"\nprotocol = \"icmp\"\n\
         [[agent.network.rule]]\nid = \"no-v6\"\naction = \"deny\"\ncidr = \"::1/128\"\n",
    );
    let daemon = Daemon::start(&policy);
    let _launched = launch_cgroup(agent);
    assert_eq!(evade(&daemon, Some(agent), &["ping", "127.0.0.5"]), "eperm");
    // The kernel drops the IPv6 echo request but does not fail the send.
    assert_eq!(evade(&daemon, Some(agent), &["ping", "::1"]), "dropped");
    assert_eq!(evade(&daemon, Some(agent), &["ping", "127.0.0.6"]), "ok");
    assert_eq!(
        evade(&daemon, None, &["ping", "127.0.0.5"]),
        "ok",
        "untagged"
    );
    let mut seen = Vec::new();
    for (address, protocol, rule) in [
        ("127.0.0.5", "icmp", "ping-agent/no-ping"),
        ("::1", "icmpv6", "ping-agent/no-v6"),
    ] {
        let event = net_event(&daemon, &mut seen, "the ping deny event", |e| {
            e["address"] == address && e["verdict"] == "deny"
        });
        assert_eq!(event["protocol"], protocol, "{event}");
        assert_eq!(event["rule"], rule, "{event}");
        assert_eq!(event["hook"], "egress", "{event}");
    }
}

/// A source route sends the packet first to a hop no hook decided: tagged processes may not
/// set one (IPv4 LSRR, IPv6 routing header); untagged ones may.
#[test]
fn source_routes_are_refused_to_tagged_processes() {
    let agent = "route-agent";
    let daemon = Daemon::start(&agent_policy(agent, ""));
    let _launched = launch_cgroup(agent);
    for family in ["v4", "v6"] {
        assert_eq!(
            evade(&daemon, Some(agent), &["source-route", family]),
            "eperm",
            "{family}"
        );
        assert_eq!(
            evade(&daemon, None, &["source-route", family]),
            "ok",
            "{family} untagged"
        );
    }
    let mut seen = Vec::new();
    // The event carries no address: the family's unspecified one.
    for unspecified in ["0.0.0.0", "::"] {
        let event = net_event(&daemon, &mut seen, "the source route event", |e| {
            e["hook"] == "setsockopt" && e["address"] == unspecified
        });
        assert_eq!(event["verdict"], "deny", "{event}");
        assert_eq!(event["decided_by"], "source_route", "{event}");
    }
}

/// A source route in a datagram's control message is not seen by the call hook, which decides
/// the final address; the packet leaves for the first hop, which the egress check judges.
#[test]
fn datagram_rerouted_by_a_control_message_is_dropped_at_egress() {
    let agent = "reroute-agent";
    let allowed = UdpSocket::bind("127.0.0.1:0").expect("a port");
    let port = allowed.local_addr().unwrap().port();
    let policy = agent_policy(
        agent,
        "[[agent.network.rule]]\nid = \"no-hop\"\naction = \"deny\"\ncidr = \"127.0.0.7/32\"\n",
    );
    let daemon = Daemon::start(&policy);
    let _launched = launch_cgroup(agent);
    let port_text = port.to_string();
    let args = ["lsrr-cmsg", "127.0.0.1", port_text.as_str(), "127.0.0.7"];
    assert_eq!(evade(&daemon, Some(agent), &args), "eperm");
    assert_eq!(evade(&daemon, None, &args), "ok", "untagged");
    let mut seen = Vec::new();
    let event = net_event(&daemon, &mut seen, "the egress deny event", |e| {
        e["hook"] == "egress" && e["address"] == "127.0.0.7"
    });
    assert_eq!(event["verdict"], "deny", "{event}");
    assert_eq!(event["rule"], "reroute-agent/no-hop", "{event}");
    assert_eq!(event["port"], port, "{event}");
}

/// Whether the running kernel has BPF LSM, which `socket_create` needs; without it, the
/// network sensor must say that these families go undecided.
fn families_decided(daemon: &Daemon) -> bool {
    let status = daemon.status();
    // The file sensor tells whether this kernel runs agentd's BPF LSM programs (some list
    // `bpf` as active and still refuse them).
    let lsm = status.file_monitoring.starts_with("lsm");
    let network = status
        .sensors
        .iter()
        .find(|sensor| sensor.name == "network")
        .expect("a network sensor in the status");
    if lsm {
        assert_eq!(network.state, "active", "{network:?}");
    } else {
        assert_eq!(network.state, "limited", "{network:?}");
        assert!(network.detail.contains("packet sockets"), "{network:?}");
    }
    lsm
}

/// Packet sockets bypass the IP stack (no cgroup hook sees them) and other families reach
/// hosts no address rule names (vsock to the hypervisor, TIPC, RDS, SMC, XDP, ...): BPF LSM
/// `socket_create` refuses them to tagged processes unless `raw_sockets` (packet) or
/// `socket_families` allows them. The obsolete `socket(AF_INET, SOCK_PACKET)` is a packet
/// socket too.
#[test]
fn packet_and_other_socket_families_are_decided_by_policy() {
    let (denied, allowed, audit) = (
        "family-denied-agent",
        "family-allowed-agent",
        "family-audit-agent",
    );
    let policy = format!(
        "{}{}raw_sockets = \"allow\"\nsocket_families = [\"vsock\", \"tipc\"]\n{}mode = \"audit\"\n",
        agent_policy(denied, ""),
        agent_policy(allowed, ""),
        agent_policy(audit, ""),
    );
    let daemon = Daemon::start(&policy);
    if !families_decided(&daemon) {
        return;
    }
    let _denied_cgroup = launch_cgroup(denied);
    let _allowed_cgroup = launch_cgroup(allowed);
    let _audit_cgroup = launch_cgroup(audit);
    let n = |value: i32| value.to_string();
    let packet = [
        n(libc::AF_PACKET),
        n(libc::SOCK_RAW),
        n(i32::from(0x0003u16.to_be())),
    ];
    let inet_packet = [n(libc::AF_INET), n(10), n(i32::from(0x0003u16.to_be()))];
    let vsock = [n(libc::AF_VSOCK), n(libc::SOCK_STREAM), n(0)];
    let tipc = [n(libc::AF_TIPC), n(libc::SOCK_RDM), n(0)];
    let unix = [n(libc::AF_UNIX), n(libc::SOCK_STREAM), n(0)];
    let netlink = [n(libc::AF_NETLINK), n(libc::SOCK_RAW), n(0)];
    let case = |agent: Option<&str>, args: &[String; 3]| {
        let mut all = vec!["socket"];
        all.extend(args.iter().map(String::as_str));
        evade(&daemon, agent, &all)
    };
    for args in [&packet, &inet_packet, &vsock, &tipc] {
        assert_eq!(case(Some(denied), args), "eperm", "{args:?} denied agent");
        // Allowed: the family may still be missing from this kernel, but not refused.
        assert_ne!(case(Some(allowed), args), "eperm", "{args:?} allowed agent");
        assert_ne!(case(Some(audit), args), "eperm", "{args:?} audit agent");
        assert_ne!(case(None, args), "eperm", "{args:?} untagged");
    }
    for args in [&unix, &netlink] {
        assert_eq!(case(Some(denied), args), "ok", "{args:?} is always allowed");
    }
    let mut seen = Vec::new();
    for (agent, family, verdict, decided_by, would_deny) in [
        (denied, "packet", "deny", "raw_sockets", false),
        (denied, "vsock", "deny", "socket_families", false),
        (denied, "tipc", "deny", "socket_families", false),
        (allowed, "packet", "allow", "raw_sockets", false),
        (allowed, "vsock", "allow", "socket_families", false),
        (audit, "vsock", "allow", "socket_families", true),
    ] {
        let event = net_event(&daemon, &mut seen, "the socket family event", |e| {
            e["hook"] == "socket" && e["agent"]["name"] == agent && e["socket_family"] == family
        });
        assert_eq!(event["verdict"], verdict, "{event}");
        assert_eq!(event["decided_by"], decided_by, "{event}");
        assert_eq!(event["would_deny"], would_deny, "{event}");
    }
    assert!(
        !seen
            .iter()
            .any(|e| e["socket_family"] == "unix" || e["socket_family"] == "netlink"),
        "always-allowed families are not reported"
    );
}

/// An agent's open sockets are capped (`network.max_sockets_per_agent`): past the cap a new
/// socket's call is refused, since the egress check could not know it, and reported; a closed
/// socket frees its place at once, however many come and go.
#[test]
fn an_agents_sockets_are_capped_and_closed_ones_free_their_place() {
    let agent = "socket-cap-agent";
    let _range = PingGroupRange::allow_all();
    let target = UdpSocket::bind("127.0.0.1:0").expect("a port");
    let port = target.local_addr().unwrap().port().to_string();
    let daemon = Daemon::start_with_config(
        &agent_policy(agent, ""),
        "[network]\nmax_sockets_per_agent = 16\n",
    );
    let _launched = launch_cgroup(agent);
    assert_eq!(
        evade(
            &daemon,
            Some(agent),
            &["hold-sockets", "16", "127.0.0.1", &port]
        ),
        "ok"
    );
    assert_eq!(
        evade(
            &daemon,
            Some(agent),
            &["hold-sockets", "17", "127.0.0.1", &port]
        ),
        "eperm@16"
    );
    // A thousand sockets one after the other: each closed one leaves the table.
    assert_eq!(
        evade(
            &daemon,
            Some(agent),
            &["hold-sockets", "1", "127.0.0.1", &port]
        ),
        "ok"
    );
    assert_eq!(
        evade(
            &daemon,
            Some(agent),
            &["churn-ping", "1000", "127.0.0.1", &port, "127.0.0.1"]
        ),
        "ok"
    );
    assert_eq!(
        evade(&daemon, None, &["hold-sockets", "64", "127.0.0.1", &port]),
        "ok",
        "untagged processes are not counted"
    );
    let mut seen = Vec::new();
    let event = net_event(&daemon, &mut seen, "the socket limit event", |e| {
        e["decided_by"] == "socket_limit"
    });
    assert_eq!(event["verdict"], "deny", "{event}");
    assert_eq!(event["hook"], "connect", "{event}");
    assert_eq!(event["agent"]["name"], agent, "{event}");
}

/// The egress check knows a ping socket from its creation; many other sockets coming and
/// going (more than the socket table holds) must not make it forget that one, or its echo
/// requests to a denied address would leave unchecked.
#[test]
fn a_ping_socket_stays_checked_after_more_sockets_than_the_table_holds() {
    let agent = "churn-agent";
    let _range = PingGroupRange::allow_all();
    let target = UdpSocket::bind("127.0.0.1:0").expect("a port");
    let port = target.local_addr().unwrap().port().to_string();
    let policy = agent_policy(
        agent,
        "[[agent.network.rule]]\nid = \"no-ping\"\naction = \"deny\"\ncidr = \"127.0.0.5/32\"\nprotocol = \"icmp\"\n",
    );
    let daemon = Daemon::start(&policy);
    let _launched = launch_cgroup(agent);
    assert_eq!(
        evade(
            &daemon,
            Some(agent),
            &["churn-ping", "70000", "127.0.0.1", &port, "127.0.0.5"]
        ),
        "eperm"
    );
    let mut seen = Vec::new();
    let event = net_event(&daemon, &mut seen, "the ping deny event", |e| {
        e["address"] == "127.0.0.5" && e["verdict"] == "deny"
    });
    assert_eq!(event["hook"], "egress", "{event}");
    assert_eq!(event["rule"], "churn-agent/no-ping", "{event}");
}

/// A later fragment carries no transport header, but a listener at its address reads its
/// bytes all the same: it is judged by its destination address, in both families.
#[test]
fn a_later_fragment_to_a_denied_address_is_dropped_at_egress() {
    let agent = "fragment-agent";
    let policy = agent_policy(
        agent,
        "raw_sockets = \"allow\"\n\
         [[agent.network.rule]]\nid = \"no-five\"\naction = \"deny\"\ncidr = \"127.0.0.5/32\"\n\
         [[agent.network.rule]]\nid = \"no-v6\"\naction = \"deny\"\ncidr = \"::1/128\"\n",
    );
    let daemon = Daemon::start(&policy);
    let _launched = launch_cgroup(agent);
    for addr in ["127.0.0.5", "::1"] {
        assert_eq!(
            evade(&daemon, Some(agent), &["fragment", addr]),
            "eperm",
            "{addr}"
        );
        assert_eq!(
            evade(&daemon, None, &["fragment", addr]),
            "ok",
            "{addr} untagged"
        );
    }
    assert_eq!(
        evade(&daemon, Some(agent), &["fragment", "127.0.0.6"]),
        "ok",
        "an allowed address"
    );
    let mut seen = Vec::new();
    for (address, rule) in [
        ("127.0.0.5", "fragment-agent/no-five"),
        ("::1", "fragment-agent/no-v6"),
    ] {
        let event = net_event(&daemon, &mut seen, "the fragment deny event", |e| {
            e["address"] == address && e["verdict"] == "deny" && e["hook"] == "egress"
        });
        assert_eq!(event["rule"], rule, "{event}");
        assert_eq!(event["port"], 0, "{event}");
    }
}

/// The setsockopt program is pinned with the other links: source routes stay refused to
/// tagged processes while agentd is down (here killed with SIGKILL, which runs no exit path).
#[test]
fn source_routes_stay_refused_while_agentd_is_down() {
    let agent = "route-down-agent";
    let mut daemon = Daemon::start(&agent_policy(agent, ""));
    let _launched = launch_cgroup(agent);
    let go = daemon.dir.path().join("go");
    let helper = helper();
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; exec '{}' evade source-route v4",
        go.display(),
        helper.display()
    );
    let child = daemon
        .launch(agent, &["sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("launching the agent");
    wait_until("the agent is tagged", || {
        daemon
            .ps()
            .iter()
            .any(|process| process.agent.name == agent && process.command.contains("sh"))
    });
    let pinned = daemon.status().pins.expect("status reports the pins").links;
    assert!(
        pinned.iter().any(|link| link.program == "setsockopt"),
        "{pinned:?}"
    );
    daemon.sigkill();
    std::fs::write(&go, "").expect("letting the agent go");
    let output = child.wait_with_output().expect("the agent's output");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "eperm",
        "a source route set with agentd down"
    );
}
