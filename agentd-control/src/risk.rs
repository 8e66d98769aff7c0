//! Agent risk across hosts, pure: detections from every host and the latest administrator
//! confirmation make one [`AgentRisk`].
//!
//! - Confirmed compromised: high, whatever the detections say, until confirmed safe.
//! - Otherwise the highest severity among the agent's detections (from any host) detected in
//!   the risk window before now, ignoring those a confirm-safe covered; none without any.

use crate::{
    clock::UnixTime,
    model::{Detection, RiskConfirmation, RiskConfirmationRecord},
    policy::RiskLevel,
};

/// Detections count for this long (seconds) unless the server is told otherwise.
pub const DEFAULT_RISK_WINDOW_SECONDS: i64 = 30 * 60;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRisk {
    pub agent_id: String,
    pub level: RiskLevel,
    pub confirmation: Option<RiskConfirmationRecord>,
    /// Detections counted.
    pub detection_count: u32,
    /// Hosts that reported them, sorted.
    pub host_ids: Vec<String>,
}

/// Aggregates one agent's risk. `detections` may hold other agents' too; they are skipped.
pub fn aggregate(
    agent_id: &str,
    detections: &[Detection],
    confirmation: Option<&RiskConfirmationRecord>,
    now: UnixTime,
    window_seconds: i64,
) -> AgentRisk {
    let since = now - window_seconds;
    let ignored_up_to = confirmation
        .filter(|c| c.confirmation == RiskConfirmation::Safe)
        .map_or(0, |c| c.last_detection_id);
    let mut level = RiskLevel::None;
    let mut detection_count = 0u32;
    let mut host_ids: Vec<String> = Vec::new();
    for detection in detections.iter().filter(|d| {
        d.agent_id == agent_id
            && d.id > ignored_up_to
            && d.detected_at.min(d.received_at) >= since
            && d.detected_at <= now
    }) {
        level = level.max(detection.severity);
        detection_count += 1;
        if !host_ids.contains(&detection.host_id) {
            host_ids.push(detection.host_id.clone());
        }
    }
    host_ids.sort();
    if confirmation.is_some_and(|c| c.confirmation == RiskConfirmation::Compromised) {
        level = RiskLevel::High;
    }
    AgentRisk {
        agent_id: agent_id.to_owned(),
        level,
        confirmation: confirmation.cloned(),
        detection_count,
        host_ids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detection(id: i64, host: &str, severity: RiskLevel, at: UnixTime) -> Detection {
        Detection {
            id,
            agent_id: "a".into(),
            host_id: host.into(),
            rule: "r".into(),
            severity,
            detected_at: at,
            received_at: at,
            summary: String::new(),
        }
    }

    fn confirm(kind: RiskConfirmation, last_detection_id: i64) -> RiskConfirmationRecord {
        RiskConfirmationRecord {
            agent_id: "a".into(),
            confirmation: kind,
            reason: "r".into(),
            confirmed_by: "admin".into(),
            confirmed_at: 0,
            last_detection_id,
        }
    }

    #[test]
    fn the_highest_severity_across_hosts_in_the_window_wins() {
        let detections = [
            detection(1, "h1", RiskLevel::Low, 1_000),
            detection(2, "h2", RiskLevel::High, 1_100),
            detection(3, "h1", RiskLevel::Medium, 1_200),
        ];
        let risk = aggregate("a", &detections, None, 1_300, 600);
        assert_eq!(risk.level, RiskLevel::High);
        assert_eq!(risk.detection_count, 3);
        assert_eq!(risk.host_ids, ["h1", "h2"]);
        let later = aggregate("a", &detections, None, 1_150 + 600, 600);
        assert_eq!(
            later.level,
            RiskLevel::Medium,
            "the high one left the window"
        );
        assert_eq!(
            aggregate("b", &detections, None, 1_300, 600).level,
            RiskLevel::None
        );
    }

    #[test]
    fn confirmations_override_detections() {
        let detections = [detection(1, "h1", RiskLevel::High, 1_000)];
        let compromised = confirm(RiskConfirmation::Compromised, 0);
        assert_eq!(
            aggregate("a", &[], Some(&compromised), 1_000, 600).level,
            RiskLevel::High
        );
        let safe = confirm(RiskConfirmation::Safe, 1);
        assert_eq!(
            aggregate("a", &detections, Some(&safe), 1_000, 600).level,
            RiskLevel::None
        );
        let newer = [
            detections[0].clone(),
            detection(2, "h1", RiskLevel::Low, 1_001),
        ];
        assert_eq!(
            aggregate("a", &newer, Some(&safe), 1_001, 600).level,
            RiskLevel::Low
        );
    }
}
