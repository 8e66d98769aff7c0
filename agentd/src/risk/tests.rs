//! Synthetic observation streams and the exact detections, transitions and remediations they
//! must produce.

use std::net::IpAddr;

use super::*;

const SEC: u64 = 1_000_000_000;

fn coder() -> AgentId {
    AgentId::from_name("coder")
}

fn other() -> AgentId {
    AgentId::from_name("other")
}

/// Defaults, with a 100 s learning window and everything else as documented.
fn config() -> RiskConfig {
    RiskConfig {
        learning_window_secs: 100,
        ..RiskConfig::default()
    }
}

fn engine(config: RiskConfig) -> RiskEngine {
    RiskEngine::new(config).unwrap()
}

fn at(agent: AgentId, secs: u64, kind: ObservationKind) -> Observation {
    Observation {
        agent,
        ktime_ns: secs * SEC,
        kind,
    }
}

fn connect(secs: u64, address: &str, domain: Option<&str>, verdict: Verdict) -> Observation {
    at(
        coder(),
        secs,
        ObservationKind::Connect(ConnectAttempt {
            address: address.parse::<IpAddr>().unwrap(),
            port: 443,
            domain: domain.map(str::to_owned),
            verdict,
            rule: None,
        }),
    )
}

fn allow(secs: u64, address: &str) -> Observation {
    connect(secs, address, None, Verdict::Allow)
}

fn deny(secs: u64, address: &str) -> Observation {
    connect(secs, address, None, Verdict::Deny)
}

fn file(secs: u64, path: &str, access: Access, verdict: Verdict, sensitive: bool) -> Observation {
    at(
        coder(),
        secs,
        ObservationKind::File(FileAccess {
            path: Some(path.to_owned()),
            dev: 2049,
            ino: 77,
            access,
            verdict,
            rule: None,
            sensitive,
        }),
    )
}

fn read_secret(secs: u64) -> Observation {
    file(
        secs,
        "/home/coder/.ssh/id_ed25519",
        Access::Read,
        Verdict::Allow,
        true,
    )
}

fn exec(secs: u64, filename: &str, ino: u64) -> Observation {
    at(
        coder(),
        secs,
        ObservationKind::Exec(ExecInfo {
            filename: filename.to_owned(),
            dev: 2049,
            ino,
            comm: filename
                .rsplit('/')
                .next()
                .unwrap()
                .chars()
                .take(15)
                .collect(),
        }),
    )
}

fn egress(secs: u64, bytes: u64) -> Observation {
    at(coder(), secs, ObservationKind::Egress { bytes })
}

fn threat(secs: u64, indicator: &str) -> Observation {
    at(
        coder(),
        secs,
        ObservationKind::ThreatIntel(ThreatIntelHit {
            indicator: indicator.to_owned(),
            source: "blocklist:abuse".to_owned(),
        }),
    )
}

fn cause(cause: &Cause) -> String {
    match cause {
        Cause::Detection { id } => format!("detection #{id}"),
        Cause::Decay { ids } => format!(
            "decay of {}",
            ids.iter()
                .map(|id| format!("#{id}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Cause::Dismissed { id } => format!("dismissal of #{id}"),
        Cause::ConfirmedCompromised => "confirmed compromised".to_owned(),
        Cause::ConfirmedSafe => "confirmed safe".to_owned(),
    }
}

/// One line per thing the outcome holds, prefixed by `t=SECS`.
fn lines(secs: u64, out: &Outcome) -> Vec<String> {
    let mut lines = Vec::new();
    for d in &out.detections {
        assert_eq!(
            d.ktime_ns,
            secs * SEC,
            "a detection carries its trigger's time"
        );
        lines.push(format!(
            "t={secs} detect #{} {} {}",
            d.id,
            d.rule,
            RiskLevel::from(d.severity)
        ));
    }
    for t in &out.transitions {
        lines.push(format!(
            "t={} risk {} -> {} by {}",
            t.ktime_ns / SEC,
            t.from,
            t.to,
            cause(&t.cause)
        ));
    }
    for r in &out.remediations {
        let agent = match r {
            Remediation::Quarantine { agent }
            | Remediation::Release { agent }
            | Remediation::Kill { agent } => *agent,
        };
        let name = if agent == coder() { "coder" } else { "other" };
        let action = match r {
            Remediation::Quarantine { .. } => "quarantine",
            Remediation::Release { .. } => "release",
            Remediation::Kill { .. } => "kill",
        };
        lines.push(format!("t={secs} {action} {name}"));
    }
    lines
}

/// Feeds a stream and returns every outcome line, in order.
fn feed(engine: &mut RiskEngine, stream: &[Observation]) -> Vec<String> {
    stream
        .iter()
        .flat_map(|o| lines(o.ktime_ns / SEC, &engine.observe(o)))
        .collect()
}

fn tick(engine: &mut RiskEngine, secs: u64) -> Vec<String> {
    lines(secs, &engine.tick(secs * SEC))
}

fn states(engine: &RiskEngine, agent: AgentId) -> Vec<(u64, DetectionState, u64)> {
    engine
        .report(agent)
        .unwrap()
        .detections
        .iter()
        .map(|r| (r.detection.id.0, r.state, r.repeats))
        .collect()
}

#[test]
fn destinations_seen_while_learning_are_familiar_and_new_ones_after_are_flagged_once() {
    let mut engine = engine(config());
    let out = feed(
        &mut engine,
        &[
            allow(1, "192.0.2.1"),
            connect(50, "192.0.2.2", Some("api.example.com"), Verdict::Allow),
            allow(150, "192.0.2.1"),
            // Same name, another address: the name is the destination.
            connect(151, "192.0.2.9", Some("API.example.com"), Verdict::Allow),
            deny(160, "198.51.100.7"),
            allow(170, "198.51.100.7"),
        ],
    );
    assert_eq!(
        out,
        [
            "t=160 detect #1 unfamiliar_destination low",
            "t=160 risk none -> low by detection #1",
        ]
    );
    let report = engine.report(coder()).unwrap();
    assert_eq!(report.learning_until_ns, Some(101 * SEC));
    assert_eq!(
        report.detections[0].detection.summary,
        "denied connect to 198.51.100.7:443, not seen during learning"
    );
    assert_eq!(
        report.detections[0].detection.evidence,
        [deny(160, "198.51.100.7")]
    );
}

#[test]
fn learning_window_runs_from_each_agents_first_observation() {
    let mut engine = engine(config());
    let mut late = allow(90, "192.0.2.1");
    late.agent = other();
    let mut after = allow(180, "192.0.2.50");
    after.agent = other();
    let out = feed(&mut engine, &[allow(0, "192.0.2.1"), late, after]);
    // `other` started learning at 90 s, so at 180 s it is still learning.
    assert_eq!(out, Vec::<String>::new());
    assert_eq!(
        feed(&mut engine, &[allow(180, "192.0.2.50")]),
        [
            "t=180 detect #1 unfamiliar_destination low",
            "t=180 risk none -> low by detection #1",
        ]
    );
}

#[test]
fn baseline_flags_destinations_outside_it_even_while_learning() {
    let mut config = config();
    config.unfamiliar_destination.baseline.insert(
        "coder".to_owned(),
        vec!["*.example.com".to_owned(), "10.0.0.0/8".to_owned()],
    );
    let mut engine = engine(config.clone());
    engine.set_baseline(coder(), config.baseline_for("coder").unwrap());
    assert_eq!(config.baseline_for("nobody").unwrap(), None);
    let out = feed(
        &mut engine,
        &[
            connect(1, "192.0.2.1", Some("api.example.com"), Verdict::Allow),
            allow(2, "10.1.2.3"),
            connect(3, "192.0.2.1", Some("example.org"), Verdict::Allow),
            connect(4, "192.0.2.1", Some("example.org"), Verdict::Allow),
        ],
    );
    assert_eq!(
        out,
        [
            "t=3 detect #1 unfamiliar_destination low",
            "t=3 risk none -> low by detection #1",
        ]
    );
    assert_eq!(
        engine.report(coder()).unwrap().detections[0]
            .detection
            .summary,
        "allowed connect to example.org:443 (192.0.2.1), outside its baseline"
    );
}

#[test]
fn forgotten_destination_is_new_again_after_eviction() {
    let mut engine = engine(RiskConfig {
        learning_window_secs: 10,
        max_destinations: 2,
        ..RiskConfig::default()
    });
    let out = feed(
        &mut engine,
        &[
            allow(0, "192.0.2.1"),
            allow(1, "192.0.2.2"),
            allow(20, "192.0.2.1"),
            // Full: 192.0.2.1 was used again, so 192.0.2.2 is evicted for .3.
            allow(21, "192.0.2.3"),
            allow(22, "192.0.2.1"),
            allow(23, "192.0.2.2"),
        ],
    );
    assert_eq!(
        out,
        [
            "t=21 detect #1 unfamiliar_destination low",
            "t=21 risk none -> low by detection #1",
            "t=23 detect #2 unfamiliar_destination low",
        ]
    );
}

#[test]
fn denied_burst_needs_count_denials_within_the_window_across_network_and_files() {
    let mut engine = engine(RiskConfig {
        denied_burst: DeniedBurstConfig {
            count: 3,
            window_secs: 10,
            ..DeniedBurstConfig::default()
        },
        ..config()
    });
    let denied_file = |secs| file(secs, "/etc/shadow", Access::Read, Verdict::Deny, false);
    let out = feed(
        &mut engine,
        &[
            deny(0, "192.0.2.1"),
            denied_file(5),
            deny(11, "192.0.2.1"), // 0..11 is wider than 10 s
            denied_file(15),       // 5..15 is exactly 10 s: a burst
            deny(16, "192.0.2.1"),
            deny(17, "192.0.2.1"),
            deny(18, "192.0.2.1"), // a second burst while the first is active: a repeat
        ],
    );
    assert_eq!(
        out,
        [
            "t=15 detect #1 denied_burst medium",
            "t=15 risk none -> medium by detection #1",
        ]
    );
    assert_eq!(states(&engine, coder()), [(1, DetectionState::Active, 1)]);
    let report = engine.report(coder()).unwrap();
    assert_eq!(report.detections[0].last_ns, 18 * SEC);
    assert_eq!(
        report.detections[0].detection.summary,
        "3 denied accesses within 10000 ms"
    );
}

#[test]
fn secret_read_then_new_destination_is_high_and_quarantines() {
    let mut engine = engine(config());
    let out = feed(
        &mut engine,
        &[
            allow(1, "192.0.2.1"),
            read_secret(120),
            allow(125, "192.0.2.1"), // familiar: the read stays pending
            connect(130, "203.0.113.5", Some("paste.example"), Verdict::Allow),
            deny(200, "192.0.2.1"), // quarantined agents are denied; nothing new
        ],
    );
    assert_eq!(
        out,
        [
            "t=130 detect #1 unfamiliar_destination low",
            "t=130 detect #2 secret_read_then_egress high",
            "t=130 risk none -> low by detection #1",
            "t=130 risk low -> high by detection #2",
            "t=130 quarantine coder",
        ]
    );
    let report = engine.report(coder()).unwrap();
    assert!(report.quarantined);
    let detection = &report.detections[1].detection;
    assert_eq!(
        detection.summary,
        "read /home/coder/.ssh/id_ed25519 then allowed connect to new destination \
         paste.example:443 (203.0.113.5) 10000 ms later"
    );
    assert_eq!(
        detection.evidence,
        [
            read_secret(120),
            connect(130, "203.0.113.5", Some("paste.example"), Verdict::Allow)
        ]
    );
}

#[test]
fn secret_read_counts_only_within_its_window_and_only_once() {
    let mut engine = engine(RiskConfig {
        secret_read_then_egress: SecretReadThenEgressConfig {
            within_secs: 30,
            ..SecretReadThenEgressConfig::default()
        },
        unfamiliar_destination: UnfamiliarDestinationConfig {
            enabled: false,
            ..UnfamiliarDestinationConfig::default()
        },
        ..config()
    });
    let out = feed(
        &mut engine,
        &[
            allow(0, "192.0.2.1"),
            read_secret(10), // while learning: not judged
            allow(20, "192.0.2.2"),
            read_secret(200),
            allow(231, "192.0.2.3"), // 31 s later: too late
            read_secret(300),
            // A write, a denied read and a plain read are not secret reads.
            file(301, "/srv/x", Access::Write, Verdict::Allow, true),
            file(302, "/srv/y", Access::Read, Verdict::Deny, true),
            file(303, "/srv/z", Access::Read, Verdict::Allow, false),
            allow(330, "192.0.2.4"), // exactly 30 s after the read at 300
            allow(331, "192.0.2.5"), // the read was used up
        ],
    );
    assert_eq!(
        out,
        [
            "t=330 detect #1 secret_read_then_egress high",
            "t=330 risk none -> high by detection #1",
            "t=330 quarantine coder",
        ]
    );
}

#[test]
fn file_rule_hit_counts_as_secret_read() {
    let mut engine = engine(RiskConfig {
        learning_window_secs: 0,
        ..RiskConfig::default()
    });
    let mut hit = file(
        5,
        "/etc/app/token",
        Access::ReadWrite,
        Verdict::Allow,
        false,
    );
    if let ObservationKind::File(access) = &mut hit.kind {
        access.rule = Some("coder/secrets".to_owned());
    }
    let out = feed(&mut engine, &[hit, allow(6, "192.0.2.1")]);
    assert_eq!(
        out,
        [
            "t=6 detect #1 unfamiliar_destination low",
            "t=6 detect #2 secret_read_then_egress high",
            "t=6 risk none -> low by detection #1",
            "t=6 risk low -> high by detection #2",
            "t=6 quarantine coder",
        ]
    );
}

#[test]
fn new_binary_and_unexpected_interpreter_after_learning() {
    let mut engine = engine(config());
    let out = feed(
        &mut engine,
        &[
            exec(0, "/usr/bin/agent", 10),
            exec(1, "/bin/sh", 11),
            exec(110, "/usr/bin/agent", 10),
            exec(111, "/usr/local/bin/agent-link", 10), // same inode: same binary
            exec(112, "/bin/sh", 11),                   // ran it while learning
            exec(113, "/usr/bin/python3.11", 12),
            exec(114, "/usr/bin/python3.11", 12),
            exec(115, "/usr/bin/pythonic", 13), // not python*: only new
        ],
    );
    assert_eq!(
        out,
        [
            "t=113 detect #1 new_binary low",
            "t=113 detect #2 unexpected_interpreter medium",
            "t=113 risk none -> low by detection #1",
            "t=113 risk low -> medium by detection #2",
            "t=115 detect #3 new_binary low",
        ]
    );
    let report = engine.report(coder()).unwrap();
    assert_eq!(
        report.detections[1].detection.summary,
        "python3.11 (/usr/bin/python3.11) spawned; the agent did not run it while learning"
    );
}

#[test]
fn interpreter_list_is_configurable() {
    let mut engine = engine(RiskConfig {
        learning_window_secs: 0,
        new_binary: NewBinaryConfig {
            enabled: false,
            ..NewBinaryConfig::default()
        },
        unexpected_interpreter: UnexpectedInterpreterConfig {
            interpreters: vec!["jq".to_owned()],
            ..UnexpectedInterpreterConfig::default()
        },
        ..RiskConfig::default()
    });
    let out = feed(
        &mut engine,
        &[exec(1, "/bin/bash", 1), exec(2, "/usr/bin/jq", 2)],
    );
    assert_eq!(
        out,
        [
            "t=2 detect #1 unexpected_interpreter medium",
            "t=2 risk none -> medium by detection #1",
        ]
    );
}

#[test]
fn threat_intel_hit_is_high_even_while_learning_and_repeats_fold_into_it() {
    let mut engine = engine(config());
    let out = feed(
        &mut engine,
        &[
            threat(1, "203.0.113.66"),
            threat(2, "203.0.113.66"),
            threat(3, "evil.example"),
        ],
    );
    assert_eq!(
        out,
        [
            "t=1 detect #1 threat_intel_hit high",
            "t=1 risk none -> high by detection #1",
            "t=1 quarantine coder",
            "t=3 detect #2 threat_intel_hit high",
        ]
    );
    assert_eq!(
        states(&engine, coder()),
        [
            (1, DetectionState::Active, 1),
            (2, DetectionState::Active, 0)
        ]
    );
}

#[test]
fn egress_spike_compares_a_window_with_the_learned_rate() {
    let mut engine = engine(RiskConfig {
        egress_spike: EgressSpikeConfig {
            window_secs: 10,
            factor: 10,
            min_bytes: 500,
            ..EgressSpikeConfig::default()
        },
        ..config()
    });
    // 1000 bytes in 100 s of learning: 100 per 10 s window; the limit is 10 × 100 = 1000.
    let out = feed(
        &mut engine,
        &[
            egress(0, 400),
            egress(50, 600),
            egress(120, 900),
            egress(125, 100), // 1000: not above
            egress(129, 1),   // 1001: a spike
            egress(129, 5000),
            egress(130, 900), // a new window
            egress(131, 101),
        ],
    );
    assert_eq!(
        out,
        [
            "t=129 detect #1 egress_spike medium",
            "t=129 risk none -> medium by detection #1",
        ]
    );
    // The second window's spike folded into the active detection.
    assert_eq!(states(&engine, coder()), [(1, DetectionState::Active, 1)]);
    assert_eq!(
        engine.report(coder()).unwrap().detections[0]
            .detection
            .summary,
        "1001 bytes sent within 10 s, above the limit of 1000"
    );
}

#[test]
fn egress_spike_absolute_threshold_applies_while_learning_and_relative_floor() {
    let mut engine = engine(RiskConfig {
        egress_spike: EgressSpikeConfig {
            window_secs: 60,
            factor: 0,
            absolute_bytes: 10_000,
            ..EgressSpikeConfig::default()
        },
        ..config()
    });
    let out = feed(&mut engine, &[egress(0, 10_000), egress(1, 1)]);
    assert_eq!(
        out,
        [
            "t=1 detect #1 egress_spike medium",
            "t=1 risk none -> medium by detection #1",
        ]
    );
    // With no learning, the relative limit is the floor, `min_bytes`.
    let mut engine = engine_with_floor();
    let out = feed(&mut engine, &[egress(0, 1_048_576), egress(1, 1)]);
    assert_eq!(
        out,
        [
            "t=1 detect #1 egress_spike medium",
            "t=1 risk none -> medium by detection #1",
        ]
    );
}

fn engine_with_floor() -> RiskEngine {
    engine(RiskConfig {
        learning_window_secs: 0,
        ..RiskConfig::default()
    })
}

#[test]
fn detections_decay_by_severity_on_the_clock_tick() {
    let mut engine = engine(RiskConfig {
        learning_window_secs: 0,
        decay: DecayConfig {
            low_secs: 60,
            medium_secs: 120,
            high_secs: 600,
        },
        ..RiskConfig::default()
    });
    let mut out = feed(
        &mut engine,
        &[
            allow(0, "192.0.2.1"),       // low, decays at 60
            exec(10, "/usr/bin/zsh", 5), // new binary (low) and interpreter (medium, 130)
        ],
    );
    out.extend(tick(&mut engine, 59));
    out.extend(tick(&mut engine, 60));
    out.extend(tick(&mut engine, 70));
    out.extend(tick(&mut engine, 129));
    out.extend(tick(&mut engine, 130));
    out.extend(tick(&mut engine, 1000));
    assert_eq!(
        out,
        [
            "t=0 detect #1 unfamiliar_destination low",
            "t=0 risk none -> low by detection #1",
            "t=10 detect #2 new_binary low",
            "t=10 detect #3 unexpected_interpreter medium",
            "t=10 risk low -> medium by detection #3",
            "t=130 risk medium -> none by decay of #3",
        ]
    );
    let report = engine.report(coder()).unwrap();
    let ended: Vec<_> = report
        .detections
        .iter()
        .map(|r| (r.state, r.ended_ns.map(|ns| ns / SEC)))
        .collect();
    assert_eq!(
        ended,
        [
            (DetectionState::Decayed, Some(60)),
            (DetectionState::Decayed, Some(70)),
            (DetectionState::Decayed, Some(130)),
        ]
    );
}

#[test]
fn decay_is_also_applied_by_the_next_observation() {
    let mut engine = engine(RiskConfig {
        learning_window_secs: 0,
        decay: DecayConfig {
            low_secs: 60,
            ..DecayConfig::default()
        },
        ..RiskConfig::default()
    });
    let out = feed(
        &mut engine,
        &[allow(0, "192.0.2.1"), allow(61, "192.0.2.2")],
    );
    assert_eq!(
        out,
        [
            "t=0 detect #1 unfamiliar_destination low",
            "t=0 risk none -> low by detection #1",
            "t=61 detect #2 unfamiliar_destination low",
            "t=61 risk low -> none by decay of #1",
            "t=61 risk none -> low by detection #2",
        ]
    );
}

#[test]
fn a_repeat_restarts_decay() {
    let mut engine = engine(RiskConfig {
        decay: DecayConfig {
            high_secs: 100,
            ..DecayConfig::default()
        },
        remediation: RemediationConfig {
            auto_release: true,
            ..RemediationConfig::default()
        },
        ..config()
    });
    let mut out = feed(&mut engine, &[threat(0, "x"), threat(90, "x")]);
    out.extend(tick(&mut engine, 100));
    out.extend(tick(&mut engine, 190));
    assert_eq!(
        out,
        [
            "t=0 detect #1 threat_intel_hit high",
            "t=0 risk none -> high by detection #1",
            "t=0 quarantine coder",
            "t=190 risk high -> none by decay of #1",
            "t=190 release coder",
        ]
    );
}

#[test]
fn several_mediums_escalate_to_high_and_several_lows_to_medium() {
    let mut engine = engine(RiskConfig {
        learning_window_secs: 0,
        unexpected_interpreter: UnexpectedInterpreterConfig {
            severity: Severity::Medium,
            ..UnexpectedInterpreterConfig::default()
        },
        new_binary: NewBinaryConfig {
            enabled: false,
            ..NewBinaryConfig::default()
        },
        ..RiskConfig::default()
    });
    let out = feed(
        &mut engine,
        &[
            allow(1, "192.0.2.1"),
            allow(2, "192.0.2.2"),
            allow(3, "192.0.2.3"), // third low: medium
            exec(4, "/bin/sh", 1),
            exec(5, "/bin/bash", 2),
            exec(6, "/usr/bin/perl", 3), // third medium: high
        ],
    );
    assert_eq!(
        out,
        [
            "t=1 detect #1 unfamiliar_destination low",
            "t=1 risk none -> low by detection #1",
            "t=2 detect #2 unfamiliar_destination low",
            "t=3 detect #3 unfamiliar_destination low",
            "t=3 risk low -> medium by detection #3",
            "t=4 detect #4 unexpected_interpreter medium",
            "t=5 detect #5 unexpected_interpreter medium",
            "t=6 detect #6 unexpected_interpreter medium",
            "t=6 risk medium -> high by detection #6",
            "t=6 quarantine coder",
        ]
    );
}

#[test]
fn admin_dismissing_a_detection_lowers_risk_and_releases() {
    let mut engine = engine(RiskConfig {
        learning_window_secs: 0,
        ..RiskConfig::default()
    });
    let mut out = feed(
        &mut engine,
        &[allow(1, "192.0.2.1"), threat(2, "192.0.2.66")],
    );
    out.extend(lines(3, &engine.dismiss(DetectionId(2), 3 * SEC).unwrap()));
    assert_eq!(
        out,
        [
            "t=1 detect #1 unfamiliar_destination low",
            "t=1 risk none -> low by detection #1",
            "t=2 detect #2 threat_intel_hit high",
            "t=2 risk low -> high by detection #2",
            "t=2 quarantine coder",
            "t=3 risk high -> low by dismissal of #2",
            "t=3 release coder",
        ]
    );
    assert_eq!(
        engine.dismiss(DetectionId(2), 4 * SEC),
        Err(RiskError::NotActive {
            id: DetectionId(2),
            state: DetectionState::Dismissed
        })
    );
    assert_eq!(
        engine.dismiss(DetectionId(9), 4 * SEC),
        Err(RiskError::NoSuchDetection(DetectionId(9)))
    );
    assert_eq!(
        states(&engine, coder()),
        [
            (1, DetectionState::Active, 0),
            (2, DetectionState::Dismissed, 0)
        ]
    );
    let dismissed = &engine.report(coder()).unwrap().detections[1];
    assert_eq!(dismissed.ended_ns, Some(3 * SEC));
    // A dismissed indicator hit again raises a new detection.
    assert_eq!(
        feed(&mut engine, &[threat(5, "192.0.2.66")]),
        [
            "t=5 detect #3 threat_intel_hit high",
            "t=5 risk low -> high by detection #3",
            "t=5 quarantine coder",
        ]
    );
}

#[test]
fn dismissing_a_decayed_detection_is_refused() {
    let mut engine = engine(RiskConfig {
        learning_window_secs: 0,
        decay: DecayConfig {
            low_secs: 10,
            ..DecayConfig::default()
        },
        ..RiskConfig::default()
    });
    feed(&mut engine, &[allow(0, "192.0.2.1"), allow(1, "192.0.2.2")]);
    // #1 decays; #2, raised a second later, keeps the level low.
    assert_eq!(tick(&mut engine, 10), Vec::<String>::new());
    assert_eq!(
        engine.dismiss(DetectionId(1), 10 * SEC),
        Err(RiskError::NotActive {
            id: DetectionId(1),
            state: DetectionState::Decayed
        })
    );
    // Past its decay time but before a tick, a detection can still be dismissed; the tick then
    // finds nothing left to decay.
    assert_eq!(
        lines(30, &engine.dismiss(DetectionId(2), 30 * SEC).unwrap()),
        ["t=30 risk low -> none by dismissal of #2"]
    );
    assert_eq!(tick(&mut engine, 31), Vec::<String>::new());
    assert_eq!(
        states(&engine, coder()),
        [
            (1, DetectionState::Decayed, 0),
            (2, DetectionState::Dismissed, 0)
        ]
    );
}

#[test]
fn confirmed_compromised_stays_high_until_confirmed_safe() {
    let mut engine = engine(RiskConfig {
        learning_window_secs: 0,
        decay: DecayConfig {
            low_secs: 10,
            ..DecayConfig::default()
        },
        remediation: RemediationConfig {
            kill_processes: true,
            auto_release: true,
            ..RemediationConfig::default()
        },
        ..RiskConfig::default()
    });
    let mut out = feed(&mut engine, &[allow(0, "192.0.2.1")]);
    out.extend(lines(1, &engine.confirm_compromised(coder(), SEC)));
    out.extend(lines(2, &engine.confirm_compromised(coder(), 2 * SEC)));
    out.extend(tick(&mut engine, 500)); // the low decays; compromised keeps it high
    out.extend(feed(&mut engine, &[allow(600, "192.0.2.2")]));
    out.extend(lines(605, &engine.confirm_safe(coder(), 605 * SEC)));
    out.extend(lines(606, &engine.confirm_safe(coder(), 606 * SEC)));
    assert_eq!(
        out,
        [
            "t=0 detect #1 unfamiliar_destination low",
            "t=0 risk none -> low by detection #1",
            "t=1 risk low -> high by confirmed compromised",
            "t=1 quarantine coder",
            "t=1 kill coder",
            "t=600 detect #2 unfamiliar_destination low",
            "t=605 risk high -> none by confirmed safe",
            "t=605 release coder",
        ]
    );
    let report = engine.report(coder()).unwrap();
    assert!(!report.compromised && !report.quarantined);
    assert_eq!(
        states(&engine, coder()),
        [
            (1, DetectionState::Decayed, 0),
            (2, DetectionState::Dismissed, 0)
        ]
    );
    let causes: Vec<_> = report.transitions.iter().map(|t| cause(&t.cause)).collect();
    assert_eq!(
        causes,
        ["detection #1", "confirmed compromised", "confirmed safe"]
    );
}

#[test]
fn confirm_compromised_of_an_agent_never_observed_quarantines_it() {
    let mut engine = engine(config());
    assert_eq!(
        lines(5, &engine.confirm_compromised(other(), 5 * SEC)),
        [
            "t=5 risk none -> high by confirmed compromised",
            "t=5 quarantine other"
        ]
    );
    assert_eq!(engine.level(other()), RiskLevel::High);
    assert_eq!(engine.level(coder()), RiskLevel::None);
    assert_eq!(engine.report(other()).unwrap().learning_until_ns, None);
}

#[test]
fn quarantine_threshold_is_configurable_and_decay_does_not_release_by_default() {
    let mut engine = engine(RiskConfig {
        learning_window_secs: 0,
        decay: DecayConfig {
            medium_secs: 100,
            ..DecayConfig::default()
        },
        remediation: RemediationConfig {
            quarantine_at: Severity::Medium,
            ..RemediationConfig::default()
        },
        new_binary: NewBinaryConfig {
            enabled: false,
            ..NewBinaryConfig::default()
        },
        ..RiskConfig::default()
    });
    let mut out = feed(&mut engine, &[allow(0, "192.0.2.1"), exec(1, "/bin/sh", 1)]);
    out.extend(tick(&mut engine, 101));
    assert!(engine.report(coder()).unwrap().quarantined);
    // An admin action releases it, even one that does not change the level.
    out.extend(lines(200, &engine.confirm_safe(coder(), 200 * SEC)));
    assert_eq!(
        out,
        [
            "t=0 detect #1 unfamiliar_destination low",
            "t=0 risk none -> low by detection #1",
            "t=1 detect #2 unexpected_interpreter medium",
            "t=1 risk low -> medium by detection #2",
            "t=1 quarantine coder",
            "t=101 risk medium -> low by decay of #2",
            "t=200 risk low -> none by confirmed safe",
            "t=200 release coder",
        ]
    );
}

#[test]
fn quarantine_off_and_kill_on_kills_at_each_crossing() {
    let mut engine = engine(RiskConfig {
        remediation: RemediationConfig {
            quarantine: false,
            kill_processes: true,
            ..RemediationConfig::default()
        },
        ..config()
    });
    let mut out = feed(&mut engine, &[threat(1, "a"), threat(2, "b")]);
    out.extend(lines(3, &engine.confirm_safe(coder(), 3 * SEC)));
    out.extend(feed(&mut engine, &[threat(4, "a")]));
    assert_eq!(
        out,
        [
            "t=1 detect #1 threat_intel_hit high",
            "t=1 risk none -> high by detection #1",
            "t=1 kill coder",
            "t=2 detect #2 threat_intel_hit high",
            "t=3 risk high -> none by confirmed safe",
            "t=4 detect #3 threat_intel_hit high",
            "t=4 risk none -> high by detection #3",
            "t=4 kill coder",
        ]
    );
}

#[test]
fn agents_are_judged_separately_and_ticks_are_in_agent_order() {
    let mut engine = engine(RiskConfig {
        decay: DecayConfig {
            high_secs: 10,
            ..DecayConfig::default()
        },
        remediation: RemediationConfig {
            auto_release: true,
            ..RemediationConfig::default()
        },
        ..config()
    });
    let mut theirs = threat(1, "x");
    theirs.agent = other();
    let mut out = feed(&mut engine, &[threat(0, "x"), theirs]);
    out.extend(tick(&mut engine, 20));
    let (first, second) = if coder() < other() {
        ("coder", "other")
    } else {
        ("other", "coder")
    };
    assert_eq!(
        out,
        [
            "t=0 detect #1 threat_intel_hit high".to_owned(),
            "t=0 risk none -> high by detection #1".to_owned(),
            "t=0 quarantine coder".to_owned(),
            "t=1 detect #2 threat_intel_hit high".to_owned(),
            "t=1 risk none -> high by detection #2".to_owned(),
            "t=1 quarantine other".to_owned(),
            format!(
                "t=20 risk high -> none by decay of #{}",
                if first == "coder" { 1 } else { 2 }
            ),
            format!(
                "t=20 risk high -> none by decay of #{}",
                if first == "coder" { 2 } else { 1 }
            ),
            format!("t=20 release {first}"),
            format!("t=20 release {second}"),
        ]
    );
    assert_eq!(engine.levels(), {
        let mut levels = vec![(coder(), RiskLevel::None), (other(), RiskLevel::None)];
        levels.sort_unstable();
        levels
    });
    assert!(engine.forget(other()));
    assert_eq!(engine.report(other()), None);
}

#[test]
fn history_is_bounded_and_drops_inactive_records_first() {
    let mut engine = engine(RiskConfig {
        learning_window_secs: 0,
        max_detections: 2,
        max_transitions: 2,
        ..RiskConfig::default()
    });
    feed(&mut engine, &[threat(1, "a")]);
    engine.dismiss(DetectionId(1), 2 * SEC).unwrap();
    feed(&mut engine, &[allow(3, "192.0.2.1"), allow(4, "192.0.2.2")]);
    // #1 (dismissed) made room for #3.
    assert_eq!(
        states(&engine, coder()),
        [
            (2, DetectionState::Active, 0),
            (3, DetectionState::Active, 0)
        ]
    );
    feed(&mut engine, &[threat(5, "b")]);
    // All active: the oldest of the lowest severity goes.
    assert_eq!(
        states(&engine, coder()),
        [
            (3, DetectionState::Active, 0),
            (4, DetectionState::Active, 0)
        ]
    );
    let report = engine.report(coder()).unwrap();
    let transitions: Vec<_> = report.transitions.iter().map(|t| (t.from, t.to)).collect();
    // Four transitions happened; the last two are kept.
    assert_eq!(
        transitions,
        [
            (RiskLevel::None, RiskLevel::Low),
            (RiskLevel::Low, RiskLevel::High),
        ]
    );
    assert_eq!(
        engine.dismiss(DetectionId(1), 6 * SEC),
        Err(RiskError::NoSuchDetection(DetectionId(1)))
    );
    // The evicted #2 no longer counts: dismissing the two kept ones leaves nothing.
    let mut out = lines(7, &engine.dismiss(DetectionId(4), 7 * SEC).unwrap());
    out.extend(lines(8, &engine.dismiss(DetectionId(3), 8 * SEC).unwrap()));
    assert_eq!(
        out,
        [
            "t=7 risk high -> low by dismissal of #4",
            "t=7 release coder",
            "t=8 risk low -> none by dismissal of #3",
        ]
    );
}

#[test]
fn disabled_rules_raise_nothing() {
    let mut config = RiskConfig {
        learning_window_secs: 0,
        ..RiskConfig::default()
    };
    config.unfamiliar_destination.enabled = false;
    config.denied_burst.enabled = false;
    config.secret_read_then_egress.enabled = false;
    config.new_binary.enabled = false;
    config.unexpected_interpreter.enabled = false;
    config.threat_intel_hit.enabled = false;
    config.egress_spike.enabled = false;
    let mut engine = engine(config);
    let mut stream = vec![read_secret(0), threat(0, "x"), exec(0, "/bin/sh", 1)];
    stream.extend((0..20).map(|i| deny(1, &format!("192.0.2.{i}"))));
    stream.push(egress(2, u64::MAX));
    assert_eq!(feed(&mut engine, &stream), Vec::<String>::new());
    assert_eq!(engine.level(coder()), RiskLevel::None);
}

#[test]
fn observations_round_trip_through_json_with_stable_names() {
    let observation = connect(3, "192.0.2.1", Some("api.example.com"), Verdict::Deny);
    let json = serde_json::to_value(&observation).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "agent": coder().to_string(),
            "ktime_ns": 3 * SEC,
            "kind": "connect",
            "address": "192.0.2.1",
            "port": 443,
            "domain": "api.example.com",
            "verdict": "deny",
        })
    );
    let back: Observation = serde_json::from_value(json).unwrap();
    assert_eq!(back, observation);
    for observation in [
        read_secret(1),
        exec(2, "/bin/sh", 3),
        egress(4, 5),
        threat(6, "x"),
    ] {
        let text = serde_json::to_string(&observation).unwrap();
        assert_eq!(
            serde_json::from_str::<Observation>(&text).unwrap(),
            observation
        );
    }
}

fn parse(text: &str) -> Result<RiskConfig, String> {
    let config: RiskConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[test]
fn empty_config_gives_documented_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config, RiskConfig::default());
    assert_eq!(config.learning_window_secs, 3600);
    assert_eq!(config.denied_burst.count, 10);
    assert_eq!(config.denied_burst.window_secs, 10);
    assert_eq!(config.remediation.quarantine_at, Severity::High);
    assert!(config.remediation.quarantine);
    assert!(!config.remediation.kill_processes);
    let severities: Vec<_> = [
        config.unfamiliar_destination.severity,
        config.denied_burst.severity,
        config.secret_read_then_egress.severity,
        config.new_binary.severity,
        config.unexpected_interpreter.severity,
        config.threat_intel_hit.severity,
        config.egress_spike.severity,
    ]
    .into_iter()
    .zip(Rule::ALL)
    .map(|(severity, rule)| format!("{rule}={}", RiskLevel::from(severity)))
    .collect();
    assert_eq!(
        severities,
        [
            "unfamiliar_destination=low",
            "denied_burst=medium",
            "secret_read_then_egress=high",
            "new_binary=low",
            "unexpected_interpreter=medium",
            "threat_intel_hit=high",
            "egress_spike=medium",
        ]
    );
}

#[test]
fn invalid_settings_are_refused_by_name_and_reason() {
    let cases = [
        (
            "[denied_burst]\ncount = 0",
            "risk.denied_burst.count: must be at least 1",
        ),
        (
            "[denied_burst]\ncount = 10001",
            "risk.denied_burst.count: must be at most 10000",
        ),
        (
            "[denied_burst]\nwindow_secs = 0",
            "risk.denied_burst.window_secs: must be at least 1",
        ),
        (
            "[secret_read_then_egress]\nwithin_secs = 0",
            "risk.secret_read_then_egress.within_secs: must be at least 1",
        ),
        (
            "max_destinations = 0",
            "risk.max_destinations: must be at least 1",
        ),
        ("max_binaries = 0", "risk.max_binaries: must be at least 1"),
        (
            "max_detections = 0",
            "risk.max_detections: must be at least 1",
        ),
        (
            "max_transitions = 0",
            "risk.max_transitions: must be at least 1",
        ),
        (
            "[decay]\nmedium_secs = 0",
            "risk.decay.medium_secs: must be at least 1",
        ),
        (
            "[escalation]\nmediums_for_high = 1",
            "risk.escalation.mediums_for_high: must be 0 (off) or at least 2",
        ),
        (
            "[egress_spike]\nwindow_secs = 0",
            "risk.egress_spike.window_secs: must be at least 1",
        ),
        (
            "[egress_spike]\nfactor = 0",
            "risk.egress_spike: factor and absolute_bytes are both 0: nothing could be a spike \
             (set enabled = false instead)",
        ),
        (
            "[unexpected_interpreter]\ninterpreters = [\"/bin/sh\"]",
            "risk.unexpected_interpreter.interpreters: `/bin/sh` is not a program name (no `/`, \
             and `*` only at the end after a name)",
        ),
        (
            "[unfamiliar_destination.baseline]\ncoder = [\"10.0.0.0/40\"]",
            "risk.unfamiliar_destination.baseline.coder: `10.0.0.0/40`: the prefix length must \
             be 0 to 32",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(parse(text).unwrap_err(), expected, "for {text:?}");
        // The engine refuses the same configuration.
        let config: RiskConfig = toml::from_str(text).unwrap();
        assert_eq!(RiskEngine::new(config).unwrap_err().to_string(), expected);
    }
    let many = format!(
        "[unexpected_interpreter]\ninterpreters = [{}]",
        (0..65)
            .map(|i| format!("\"p{i}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(
        parse(&many).unwrap_err(),
        "risk.unexpected_interpreter.interpreters: at most 64 entries, not 65"
    );
}

#[test]
fn unknown_detections_negative_windows_and_bad_levels_are_refused_by_name() {
    let unknown = parse("[lateral_movement]\nenabled = true").unwrap_err();
    assert!(
        unknown.contains("unknown field `lateral_movement`"),
        "{unknown}"
    );
    let unknown = parse("[denied_burst]\ncuont = 3").unwrap_err();
    assert!(unknown.contains("unknown field `cuont`"), "{unknown}");
    let negative = parse("[denied_burst]\nwindow_secs = -5").unwrap_err();
    assert!(negative.contains("window_secs = -5"), "{negative}");
    assert!(
        negative.contains("invalid value: integer `-5`"),
        "{negative}"
    );
    let level = parse("[remediation]\nquarantine_at = \"none\"").unwrap_err();
    assert!(level.contains("unknown variant `none`"), "{level}");
}

#[test]
fn relative_egress_limit_waits_for_the_end_of_learning() {
    let mut engine = engine(RiskConfig {
        egress_spike: EgressSpikeConfig {
            window_secs: 10,
            min_bytes: 100,
            ..EgressSpikeConfig::default()
        },
        ..config()
    });
    // 5000 bytes while learning: far above the 100-byte floor, but learning.
    let out = feed(
        &mut engine,
        &[egress(0, 5000), egress(95, 5000), egress(104, 5001)],
    );
    // Learned: 10000 bytes in 100 s, 1000 per window; the limit is 10 × 1000 = 10000. The window
    // that began at 95 s holds 10001 bytes at 104 s.
    assert_eq!(
        out,
        [
            "t=104 detect #1 egress_spike medium",
            "t=104 risk none -> medium by detection #1",
        ]
    );
}

#[test]
fn documented_example_configuration_loads() {
    let doc = include_str!("../../../docs/risk.md");
    let (_, rest) = doc
        .split_once("## Example\n\n```toml\n")
        .expect("docs/risk.md has an example");
    let (example, _) = rest.split_once("```").unwrap();
    let config = crate::config::Config::parse(example, std::path::Path::new("risk.md")).unwrap();
    let risk = config.risk;
    assert_eq!(risk.learning_window_secs, 1800);
    assert_eq!(risk.egress_spike.absolute_bytes, 1_073_741_824);
    assert_eq!(
        risk.unexpected_interpreter.interpreters,
        ["sh", "bash", "python*", "node"]
    );
    let baseline = risk.baseline_for("coder").unwrap().unwrap();
    assert!(baseline.contains("140.82.112.3".parse().unwrap(), Some("api.github.com")));
    assert!(!baseline.contains("192.0.2.1".parse().unwrap(), Some("paste.example")));
    RiskEngine::new(risk).unwrap();
}

#[test]
fn a_connect_stamped_before_the_read_does_not_use_it() {
    let mut engine = engine(RiskConfig {
        learning_window_secs: 0,
        unfamiliar_destination: UnfamiliarDestinationConfig {
            enabled: false,
            ..UnfamiliarDestinationConfig::default()
        },
        ..RiskConfig::default()
    });
    // Events from different CPUs can arrive slightly out of order.
    let out = feed(
        &mut engine,
        &[
            read_secret(10),
            allow(9, "192.0.2.1"),
            allow(11, "192.0.2.2"),
        ],
    );
    assert_eq!(
        out,
        [
            "t=11 detect #1 secret_read_then_egress high",
            "t=11 risk none -> high by detection #1",
            "t=11 quarantine coder",
        ]
    );
}

#[test]
fn outcome_and_history_serialize_with_stable_names() {
    let mut engine = engine(RiskConfig {
        learning_window_secs: 0,
        ..RiskConfig::default()
    });
    let outcome = engine.observe(&threat(2, "203.0.113.66"));
    let agent = coder().to_string();
    let evidence = serde_json::json!({
        "agent": agent,
        "ktime_ns": 2 * SEC,
        "kind": "threat_intel",
        "indicator": "203.0.113.66",
        "source": "blocklist:abuse",
    });
    let detection = serde_json::json!({
        "id": 1,
        "agent": agent,
        "rule": "threat_intel_hit",
        "severity": "high",
        "ktime_ns": 2 * SEC,
        "summary": "203.0.113.66 is listed by blocklist:abuse",
        "evidence": [evidence],
    });
    let transition = serde_json::json!({
        "agent": agent,
        "from": "none",
        "to": "high",
        "ktime_ns": 2 * SEC,
        "cause": {"kind": "detection", "id": 1},
    });
    assert_eq!(
        serde_json::to_value(&outcome).unwrap(),
        serde_json::json!({
            "detections": [detection],
            "transitions": [transition],
            "remediations": [{"action": "quarantine", "agent": agent}],
        })
    );
    engine.dismiss(DetectionId(1), 3 * SEC).unwrap();
    let report = serde_json::to_value(engine.report(coder()).unwrap()).unwrap();
    assert_eq!(
        report,
        serde_json::json!({
            "agent": agent,
            "level": "none",
            "compromised": false,
            "quarantined": false,
            "learning_until_ns": 2 * SEC,
            "detections": [{
                "detection": detection,
                "state": "dismissed",
                "last_ns": 2 * SEC,
                "repeats": 0,
                "ended_ns": 3 * SEC,
            }],
            "transitions": [
                transition,
                {
                    "agent": agent,
                    "from": "high",
                    "to": "none",
                    "ktime_ns": 3 * SEC,
                    "cause": {"kind": "dismissed", "id": 1},
                },
            ],
        })
    );
}

#[test]
fn a_renamed_agent_keeps_its_risk_detections_and_evidence_under_the_new_id() {
    let mut engine = engine(config());
    feed(
        &mut engine,
        &[allow(1, "192.0.2.1"), deny(160, "198.51.100.7")],
    );
    let before = engine.report(coder()).expect("the agent has risk state");
    let adopted = AgentId(uuid::Uuid::from_u128(42));
    engine.rename(coder(), adopted);
    assert_eq!(
        engine.report(coder()),
        None,
        "nothing stays under the old id"
    );
    let after = engine.report(adopted).expect("the state moved");
    assert_eq!(after.level, before.level);
    assert_eq!(after.detections.len(), 1);
    assert_eq!(after.detections[0].detection.agent, adopted);
    assert!(
        after.detections[0]
            .detection
            .evidence
            .iter()
            .all(|observation| observation.agent == adopted)
    );
    assert!(after.transitions.iter().all(|t| t.agent == adopted));
    // A later observation under the new id adds to the same state.
    let mut later = deny(170, "203.0.113.9");
    later.agent = adopted;
    feed(&mut engine, &[later]);
    assert_eq!(engine.report(adopted).unwrap().detections.len(), 2);
}
