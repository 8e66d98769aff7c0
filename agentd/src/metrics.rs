//! Prometheus metrics: the figures `agentd status` shows, plus the risk engine's counters, in
//! the Prometheus text format. The daemon takes a [`Snapshot`] when scraped; [`encode`] turns
//! it into the text served at `/metrics`.

use prometheus_client::{
    encoding::text,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::events::EventCounts;

type Labels = Vec<(String, String)>;

/// What the daemon knows at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub events: EventCounts,
    pub tagged_processes: u64,
    pub tags_lost: u64,
    /// New processes of agents at their cap: (tagged anyway, refused with `EAGAIN`).
    pub tags_over_cap: (u64, u64),
    pub agents: u64,
    pub quarantined_agents: u64,
    /// 1 when BPF LSM enforces file rules, 0 when they are only observed.
    pub file_enforcement: bool,
    pub network_policy_version: u64,
    /// (rule, severity) → detections raised.
    pub detections: Vec<((String, String), u64)>,
    /// action → remediations carried out.
    pub remediations: Vec<(String, u64)>,
    /// agent → risk level (0 none, 1 low, 2 medium, 3 high).
    pub risk_levels: Vec<(String, u64)>,
    /// sensor → its state (`active`, `limited`, `unavailable`, `disabled`).
    pub sensors: Vec<(String, String)>,
    /// Event lines and notices that the output could not write (a closed stdout, a full disk).
    pub output_errors: u64,
    /// The SVIDs the Workload API holds.
    pub svids: crate::api::SvidStatus,
    /// When the host's mTLS client certificate in use expires (Unix seconds).
    pub host_certificate_expiry: Option<i64>,
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric = Counter::<u64>::default();
    metric.inc_by(value);
    registry.register(name, help, metric);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric = Gauge::<i64>::default();
    metric.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, metric);
}

/// The text exposition of `snapshot`.
pub fn encode(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("agentd");
    let events = &snapshot.events;
    counter(
        &mut registry,
        "events_produced",
        "Events the kernel programs tried to send",
        events.produced,
    );
    counter(
        &mut registry,
        "events_delivered",
        "Events read from the ring buffer and decoded",
        events.delivered,
    );
    counter(
        &mut registry,
        "events_undecodable",
        "Events read that did not decode",
        events.undecodable,
    );
    let dropped = Family::<Labels, Counter<u64>>::default();
    for (cpu, value) in events.dropped_per_cpu.iter().enumerate() {
        dropped
            .get_or_create(&vec![("cpu".to_owned(), cpu.to_string())])
            .inc_by(*value);
    }
    registry.register(
        "events_dropped",
        "Events the ring buffer had no room for, per CPU",
        dropped,
    );
    gauge(
        &mut registry,
        "tagged_processes",
        "Processes tagged with an agent identity",
        snapshot.tagged_processes,
    );
    counter(
        &mut registry,
        "tags_lost",
        "Processes that could not be tagged because the tag map was full",
        snapshot.tags_lost,
    );
    counter(
        &mut registry,
        "tags_over_cap",
        "New processes of agents at their process cap that were tagged (no BPF LSM to refuse them)",
        snapshot.tags_over_cap.0,
    );
    counter(
        &mut registry,
        "forks_refused_over_cap",
        "New processes of agents at their process cap refused with EAGAIN (BPF LSM)",
        snapshot.tags_over_cap.1,
    );
    gauge(
        &mut registry,
        "agents",
        "Agents in the policy in force",
        snapshot.agents,
    );
    gauge(
        &mut registry,
        "quarantined_agents",
        "Agents quarantined in the kernel",
        snapshot.quarantined_agents,
    );
    gauge(
        &mut registry,
        "file_enforcement",
        "1 when BPF LSM enforces file rules, 0 when they are only observed",
        u64::from(snapshot.file_enforcement),
    );
    gauge(
        &mut registry,
        "network_policy_version",
        "The network policy version in force",
        snapshot.network_policy_version,
    );
    register_health(&mut registry, snapshot);
    register_risk(&mut registry, snapshot);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = text::encode(&mut out, &registry);
    out
}

/// Each sensor's state and the output's failed writes.
fn register_health(registry: &mut Registry, snapshot: &Snapshot) {
    let sensors = Family::<Labels, Gauge<i64>>::default();
    for (sensor, state) in &snapshot.sensors {
        sensors
            .get_or_create(&vec![
                ("sensor".to_owned(), sensor.clone()),
                ("state".to_owned(), state.clone()),
            ])
            .set(1);
    }
    registry.register(
        "sensor_state",
        "1 for each sensor's state: active, limited, unavailable or disabled",
        sensors,
    );
    counter(
        registry,
        "output_errors",
        "Event lines and notices the output could not write",
        snapshot.output_errors,
    );
    let svids = Family::<Labels, Gauge<i64>>::default();
    for (kind, count) in [
        ("x509", snapshot.svids.x509_svids),
        ("jwt", snapshot.svids.jwt_svids),
    ] {
        svids
            .get_or_create(&vec![("kind".to_owned(), kind.to_owned())])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    registry.register(
        "svids_held",
        "SVIDs the Workload API holds for agents, not expired, by kind",
        svids,
    );
    if let Some(expiry) = snapshot.svids.x509_next_expiry {
        let next = Gauge::<i64>::default();
        next.set(expiry);
        registry.register(
            "x509_svid_next_expiry_seconds",
            "The earliest expiry of a held X.509-SVID (Unix time)",
            next,
        );
    }
    if let Some(expiry) = snapshot.host_certificate_expiry {
        let gauge = Gauge::<i64>::default();
        gauge.set(expiry);
        registry.register(
            "host_certificate_expiry_seconds",
            "When the host's mTLS client certificate in use expires (Unix time); renewed at half-life",
            gauge,
        );
    }
}

/// The risk engine's families.
fn register_risk(registry: &mut Registry, snapshot: &Snapshot) {
    let detections = Family::<Labels, Counter<u64>>::default();
    for ((rule, severity), value) in &snapshot.detections {
        detections
            .get_or_create(&vec![
                ("rule".to_owned(), rule.clone()),
                ("severity".to_owned(), severity.clone()),
            ])
            .inc_by(*value);
    }
    registry.register(
        "detections",
        "Detections raised by the risk engine",
        detections,
    );
    let remediations = Family::<Labels, Counter<u64>>::default();
    for (action, value) in &snapshot.remediations {
        remediations
            .get_or_create(&vec![("action".to_owned(), action.clone())])
            .inc_by(*value);
    }
    registry.register("remediations", "Remediations carried out", remediations);
    let risk = Family::<Labels, Gauge<i64>>::default();
    for (agent, level) in &snapshot.risk_levels {
        risk.get_or_create(&vec![("agent".to_owned(), agent.clone())])
            .set(i64::try_from(*level).unwrap_or(i64::MAX));
    }
    registry.register(
        "agent_risk_level",
        "Risk level per agent: 0 none, 1 low, 2 medium, 3 high",
        risk,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_exposition_has_every_family_with_its_values() {
        let text = encode(&Snapshot {
            events: EventCounts {
                delivered: 90,
                undecodable: 1,
                dropped: 9,
                produced: 100,
                dropped_per_cpu: vec![4, 5],
            },
            tagged_processes: 3,
            file_enforcement: true,
            detections: vec![(("denied_burst".into(), "medium".into()), 2)],
            remediations: vec![("quarantine".into(), 1)],
            risk_levels: vec![("coder".into(), 2)],
            sensors: vec![("files".into(), "unavailable".into())],
            output_errors: 4,
            svids: crate::api::SvidStatus {
                x509_svids: 2,
                x509_next_expiry: Some(1_800_000_000),
                jwt_svids: 5,
            },
            host_certificate_expiry: Some(1_900_000_000),
            ..Snapshot::default()
        });
        for line in [
            "agentd_events_produced_total 100",
            "agentd_events_delivered_total 90",
            "agentd_events_dropped_total{cpu=\"1\"} 5",
            "agentd_tagged_processes 3",
            "agentd_file_enforcement 1",
            "agentd_detections_total{rule=\"denied_burst\",severity=\"medium\"} 2",
            "agentd_remediations_total{action=\"quarantine\"} 1",
            "agentd_agent_risk_level{agent=\"coder\"} 2",
            "agentd_sensor_state{sensor=\"files\",state=\"unavailable\"} 1",
            "agentd_output_errors_total 4",
            "agentd_svids_held{kind=\"x509\"} 2",
            "agentd_svids_held{kind=\"jwt\"} 5",
            "agentd_x509_svid_next_expiry_seconds 1800000000",
            "agentd_host_certificate_expiry_seconds 1900000000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
