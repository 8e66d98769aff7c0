//! Tests of the decision model, its wire validation and the table compiler.

use agentd_common::{CaAgent, CaGrant, FileRule, FileRuleKey, InodeKey, file_access, net_action};
use agentd_proto::v1 as proto;

use super::{model::*, tables::*};
use crate::policy::network::Categories;

fn raw_grant(cidr: &str, ports: &str, expire: Option<i64>) -> proto::NetworkGrant {
    proto::NetworkGrant {
        destination: Some(proto::network_grant::Destination::Cidr(cidr.to_owned())),
        ports: ports.to_owned(),
        expire_time: expire.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        source: "pkg-1".to_owned(),
    }
}

fn raw_set(grants: Vec<proto::NetworkGrant>) -> proto::DecisionSet {
    proto::DecisionSet {
        version: 7,
        issue_time: Some(prost_types::Timestamp {
            seconds: 1_000,
            nanos: 0,
        }),
        decisions: vec![proto::AgentDecision {
            agent_id: "id".into(),
            agent_name: "coder".into(),
            action: proto::Action::Allow as i32,
            network_restricted: true,
            network_grants: grants,
            network_denials: vec![raw_grant("10.1.0.0/16", "", None)],
            offline_behavior: proto::OfflineBehavior::FailClosed as i32,
            offline_ttl_seconds: 60,
            ..proto::AgentDecision::default()
        }],
    }
}

#[test]
fn a_set_becomes_kernel_lists_with_denials_first_and_boot_clock_expiries() {
    let set = DecisionSet::from_proto(&raw_set(vec![
        raw_grant("10.0.0.0/8", "443", Some(1_060)),
        raw_grant("192.0.2.1", "", None),
    ]))
    .unwrap();
    assert_eq!(set.version, 7);
    assert_eq!(set.decisions[0].offline, Offline::FailClosed);
    let clocks = Clocks {
        unix_ms: 1_000_000,
        boot_ns: 5_000_000_000,
    };
    let tables = tables(
        &set,
        &mut |_| Some(3),
        &|_| false,
        &mut |_| 9,
        &|_| Err(std::io::ErrorKind::NotFound.into()),
        &Categories::sample(),
        clocks,
    )
    .unwrap();
    assert_eq!(
        tables.agents,
        vec![(
            3,
            CaAgent {
                flags: CaAgent::FLAG_RESTRICTED,
                rule: 9
            }
        )]
    );
    let (len, key, list) = tables
        .v4
        .iter()
        .find(|(len, _, _)| *len == 16)
        .expect("the denial's prefix");
    assert_eq!((*len, key.addr), (16, [10, 1, 0, 0]));
    // Under 10.1/16: the denial first, then the /8 grant that contains it.
    assert_eq!(list.count, 2);
    assert_eq!(list.grants[0].action, net_action::DENY);
    assert_eq!(list.grants[1].port_lo, 443);
    // Expires 60 s after `clocks`: 60 s later on the boot clock.
    assert_eq!(list.grants[1].expires_ns, 5_000_000_000 + 60_000_000_000);
    let host = tables.v4.iter().find(|(len, _, _)| *len == 32).unwrap();
    assert_eq!(host.2.grants[0].expires_ns, 0, "no expiry");
}

#[test]
fn bad_fields_refuse_the_set_by_name() {
    let err =
        DecisionSet::from_proto(&raw_set(vec![raw_grant("10.0.0.0/33", "", None)])).unwrap_err();
    assert_eq!(err.field, "decisions[0].network_grants[0].cidr");
    let err = DecisionSet::from_proto(&raw_set(vec![raw_grant("10.0.0.0/8", "70000", None)]))
        .unwrap_err();
    assert_eq!(err.field, "decisions[0].network_grants[0].ports");
    assert_eq!(
        mcp_host("https://mcp.example.com/sse").unwrap(),
        ("mcp.example.com".into(), 443)
    );
    assert_eq!(
        mcp_host("http://127.0.0.1:8931/mcp").unwrap(),
        ("127.0.0.1".into(), 8931)
    );
    assert!(mcp_host("mcp.example.com").is_err());
}

#[test]
fn offline_standing_follows_the_behaviour_after_the_ttl() {
    let mut decision = DecisionSet::from_proto(&raw_set(Vec::new()))
        .unwrap()
        .decisions[0]
        .clone();
    assert_eq!(decision.standing(59_000), Standing::Current);
    assert_eq!(decision.standing(61_000), Standing::FailClosed);
    decision.offline = Offline::Baseline;
    assert_eq!(decision.standing(61_000), Standing::Baseline);
    decision.offline = Offline::KeepLast;
    assert_eq!(decision.standing(i64::MAX), Standing::Current);
    let set = DecisionSet::from_proto(&raw_set(Vec::new())).unwrap();
    let blocked = tables(
        &set,
        &mut |_| Some(1),
        &|_| true,
        &mut |_| 2,
        &|_| Err(std::io::ErrorKind::NotFound.into()),
        &Categories::sample(),
        Clocks {
            unix_ms: 0,
            boot_ns: 0,
        },
    )
    .unwrap();
    assert_ne!(blocked.agents[0].1.flags & CaAgent::FLAG_BLOCK, 0);
}

#[test]
fn expired_grants_get_an_instant_in_the_past_never_zero() {
    let clocks = Clocks {
        unix_ms: 10_000,
        boot_ns: 77,
    };
    assert_eq!(clocks.boot_ns(5_000), 1);
    assert_eq!(clocks.boot_ns(10_001), 77 + 1_000_000);
}

fn raw_file(path: &str, access: &[&str], action: &str, expire: Option<i64>) -> proto::FileControl {
    proto::FileControl {
        path: path.to_owned(),
        access: access.iter().map(|a| (*a).to_owned()).collect(),
        action: action.to_owned(),
        expire_time: expire.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        source: format!("{action}-{path}"),
    }
}

fn with_files(files: Vec<proto::FileControl>) -> proto::DecisionSet {
    let mut raw = raw_set(Vec::new());
    raw.decisions[0].file_controls = files;
    raw
}

#[test]
fn bad_file_controls_refuse_the_set_by_field() {
    let cases = [
        (
            raw_file("srv/ledger", &["read"], "deny", None),
            "decisions[0].file_controls[1].path",
        ),
        (
            raw_file("/srv", &[], "deny", None),
            "decisions[0].file_controls[1].access",
        ),
        (
            raw_file("/srv", &["read", "delete"], "deny", None),
            "decisions[0].file_controls[1].access[1]",
        ),
        (
            raw_file("/srv", &["read"], "block", None),
            "decisions[0].file_controls[1].action",
        ),
    ];
    for (bad, field) in cases {
        let good = raw_file("/srv", &["write"], "deny", None);
        let err = DecisionSet::from_proto(&with_files(vec![good, bad])).unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }
    let set = DecisionSet::from_proto(&with_files(vec![raw_file(
        "/srv",
        &["read", "exec"],
        "allow",
        Some(2_000),
    )]))
    .unwrap();
    assert_eq!(
        set.decisions[0].file_controls[0].expires_unix_ms,
        Some(2_000_000)
    );
}

fn inode(ino: u64) -> InodeKey {
    InodeKey::new(8, 1, ino)
}

#[test]
fn file_controls_merge_per_access_and_join_the_local_rules() {
    let set = DecisionSet::from_proto(&with_files(vec![
        // An access package's allow, which expires, and a policy's deny of writes on the
        // same directory: the deny wins for writes, the allow stays for reads.
        raw_file("/srv/ledger", &["read", "write"], "allow", Some(1_060)),
        raw_file("/srv/ledger", &["write"], "deny", None),
        raw_file("/srv/keys", &["read"], "deny", Some(1_030)),
        raw_file("/nowhere", &["read"], "deny", None),
    ]))
    .unwrap();
    let clocks = Clocks {
        unix_ms: 1_000_000,
        boot_ns: 5_000_000_000,
    };
    let resolve = |path: &str| match path {
        "/srv/ledger" => Ok(inode(10)),
        "/srv/keys" => Ok(inode(11)),
        _ => Err(std::io::ErrorKind::NotFound.into()),
    };
    let tables = tables(
        &set,
        &mut |_| Some(3),
        &|_| false,
        &mut |source| if source.contains("deny") { 7 } else { 8 },
        &resolve,
        &Categories::sample(),
        clocks,
    )
    .unwrap();
    assert_ne!(tables.agents[0].1.flags & CaAgent::FLAG_FILE_CONTROLS, 0);
    assert_eq!(tables.missing_paths.len(), 1, "{:?}", tables.missing_paths);
    assert!(tables.missing_paths[0].contains("/nowhere"));
    let ledger = tables
        .files
        .iter()
        .find(|(key, _)| key.inode == inode(10))
        .unwrap();
    assert_eq!(ledger.0.agent, 3);
    let [read, write, exec] = ledger.1;
    assert_eq!(
        (read.present, read.action, read.rule),
        (1, net_action::ALLOW, 8)
    );
    assert_eq!(read.expires_ns, 5_000_000_000 + 60_000_000_000);
    assert_eq!(
        (write.present, write.action, write.rule),
        (1, net_action::DENY, 7)
    );
    assert_eq!(write.expires_ns, 0, "the deny does not expire");
    assert_eq!(exec.present, 0);
    let keys = tables
        .files
        .iter()
        .find(|(key, _)| key.inode == inode(11))
        .unwrap();
    assert_eq!(keys.1[0].expires_ns, 5_000_000_000 + 30_000_000_000);

    // The local rules: one on the same directory (audit deny of exec), one elsewhere.
    let local_key = |ino| FileRuleKey {
        agent: 3,
        pad: 0,
        inode: inode(ino),
    };
    let local = vec![
        (
            local_key(10),
            FileRule::local(file_access::EXEC, net_action::DENY, true, 1),
        ),
        (
            local_key(12),
            FileRule::local(file_access::READ, net_action::DENY, false, 2),
        ),
    ];
    let merged = merge_file_rules(&local, &tables.files);
    assert_eq!(merged.len(), 3);
    let entry = |ino| merged.iter().find(|(k, _)| *k == local_key(ino)).unwrap().1;
    // The local rule is kept as it was, with the decision beside it.
    assert_eq!(
        (entry(10).access, entry(10).audit, entry(10).rule),
        (file_access::EXEC, 1, 1)
    );
    assert_eq!(entry(10).decision, ledger.1);
    assert_eq!(entry(12), local[1].1);
    // An object only the decision names: no local rule (covers nothing), the controls.
    assert_eq!(entry(11).access, 0);
    assert_eq!(entry(11).decision[0].action, net_action::DENY);
    // Without decisions, the local rules alone.
    assert_eq!(merge_file_rules(&local, &[]), local);
}

#[test]
fn report_only_network_is_a_second_flagged_layer() {
    let mut raw = raw_set(vec![raw_grant("10.0.0.0/8", "", None)]);
    raw.decisions[0].report_only_network_restricted = true;
    raw.decisions[0].report_only_network_grants = vec![raw_grant("10.0.0.0/8", "443", None)];
    raw.decisions[0].report_only_network_denials = vec![raw_grant("10.9.0.0/16", "", None)];
    let set = DecisionSet::from_proto(&raw).unwrap();
    let would = set.decisions[0].report_only_network.as_ref().unwrap();
    assert!(would.restricted);
    let clocks = Clocks {
        unix_ms: 0,
        boot_ns: 0,
    };
    let built = tables(
        &set,
        &mut |_| Some(1),
        &|_| false,
        &mut |_| 2,
        &|_| Err(std::io::ErrorKind::NotFound.into()),
        &Categories::sample(),
        clocks,
    )
    .unwrap();
    let flags = built.agents[0].1.flags;
    assert_ne!(flags & CaAgent::FLAG_REPORT_ONLY, 0);
    assert_ne!(flags & CaAgent::FLAG_REPORT_ONLY_RESTRICTED, 0);
    assert_eq!(flags & CaAgent::FLAG_REPORT_ONLY_BLOCK, 0);
    let (_, _, list) = built
        .v4
        .iter()
        .find(|(len, key, _)| *len == 16 && key.addr == [10, 9, 0, 0])
        .unwrap();
    let entries: Vec<(u8, u8, u16)> = list.grants[..list.count as usize]
        .iter()
        .map(|g| (g.flags, g.action, g.port_lo))
        .collect();
    // The enforced denial of 10.1/16 is not under 10.9/16; the report-only denial comes
    // first, then the /8 grants of both layers.
    assert!(
        entries.contains(&(CaGrant::FLAG_REPORT_ONLY, net_action::DENY, 0)),
        "{entries:?}"
    );
    assert!(
        entries.contains(&(CaGrant::FLAG_REPORT_ONLY, net_action::ALLOW, 443)),
        "{entries:?}"
    );
    assert!(entries.contains(&(0, net_action::ALLOW, 0)), "{entries:?}");
    assert_eq!(entries[0].1, net_action::DENY);

    // Without report-only network controls: no second layer.
    let plain = DecisionSet::from_proto(&raw_set(Vec::new())).unwrap();
    assert_eq!(plain.decisions[0].report_only_network, None);
    // A report-only block: every connect would be denied.
    let mut raw = raw_set(Vec::new());
    raw.decisions[0].report_only_action = proto::Action::Block as i32;
    let set = DecisionSet::from_proto(&raw).unwrap();
    let built = tables(
        &set,
        &mut |_| Some(1),
        &|_| false,
        &mut |_| 2,
        &|_| Err(std::io::ErrorKind::NotFound.into()),
        &Categories::sample(),
        clocks,
    )
    .unwrap();
    assert_ne!(built.agents[0].1.flags & CaAgent::FLAG_REPORT_ONLY_BLOCK, 0);
}
