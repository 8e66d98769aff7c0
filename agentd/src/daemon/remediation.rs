//! Risk: assessing events, concluding detections, and remediating.

use super::{error::RequestError, output::notice_line, state::State};
use crate::{
    api::{Reply, RiskRequest},
    assess::{self, Notice},
    clock::{boottime_ns, unix_ms},
    config::OutputFormat,
    control::Detected,
    events::Event,
    identity::AgentId,
    risk::{self, AgentRisk, DetectionId, Outcome, Remediation, RiskLevel},
};

impl State {
    /// Feeds `event` to the risk engine and carries out what it concludes.
    pub(super) fn assess(
        &mut self,
        event: &Event,
        notices: &mut Vec<String>,
        format: OutputFormat,
    ) {
        for observation in assess::observations(event, &self.registry, &self.sensitive_rules) {
            let outcome = self.risk.observe(&observation);
            if !outcome.is_empty() {
                self.conclude(&outcome, Some(observation.ktime_ns), notices, format);
            }
        }
    }

    /// Writes the notices for `outcome` and carries out its remediations. `trigger_ns` is the
    /// kernel time of the event behind it, for the latency of the remediation.
    pub(super) fn conclude(
        &mut self,
        outcome: &Outcome,
        trigger_ns: Option<u64>,
        notices: &mut Vec<String>,
        format: OutputFormat,
    ) {
        for detection in &outcome.detections {
            // The control plane knows the agent by its own id: the one its decisions carry.
            let name = self.agent_name(detection.agent);
            let registered = self.ca.set.as_ref().and_then(|set| {
                set.decisions
                    .iter()
                    .find(|decision| decision.agent_name == name)
                    .map(|decision| decision.agent_id.clone())
            });
            if let (Some(agent_id), true) = (registered, self.ca.to_control.is_some()) {
                self.ca.pending_detections.push(Detected {
                    agent_id,
                    rule: detection.rule.name().to_owned(),
                    severity: format!("{:?}", detection.severity).to_lowercase(),
                    unix_ms: unix_ms(),
                    summary: detection.summary.clone(),
                });
            }
            *self
                .detection_counts
                .entry((
                    detection.rule.name().to_owned(),
                    format!("{:?}", detection.severity).to_lowercase(),
                ))
                .or_default() += 1;
            let name = self.agent_name(detection.agent);
            notices.push(notice_line(
                &Notice::Detection {
                    agent_name: &name,
                    detection,
                },
                format,
            ));
        }
        // Detections go to the control plane at once: its risk loop waits on them.
        self.send_detections();
        for transition in &outcome.transitions {
            let name = self.agent_name(transition.agent);
            notices.push(notice_line(
                &Notice::RiskChange {
                    agent_name: &name,
                    transition,
                },
                format,
            ));
        }
        for remediation in &outcome.remediations {
            let (agent, result) = match *remediation {
                Remediation::Quarantine { agent } => {
                    let name = self.agent_name(agent);
                    (agent, self.quarantine(&name, true).map(drop))
                }
                Remediation::Release { agent } => {
                    let name = self.agent_name(agent);
                    (agent, self.quarantine(&name, false).map(drop))
                }
                Remediation::Kill { agent } => (agent, self.kill_agent(agent)),
            };
            let latency_ns = trigger_ns.map(|trigger| boottime_ns().saturating_sub(trigger));
            if result.is_ok() {
                let action = match remediation {
                    Remediation::Quarantine { .. } => "quarantine",
                    Remediation::Release { .. } => "release",
                    Remediation::Kill { .. } => "kill",
                };
                *self
                    .remediation_counts
                    .entry(action.to_owned())
                    .or_default() += 1;
            }
            let name = self.agent_name(agent);
            let outcome = match result {
                Ok(()) => "done".to_owned(),
                Err(err) => {
                    let err = err.describe();
                    tracing::error!(agent = name, ?remediation, err, "remediation failed");
                    err
                }
            };
            notices.push(notice_line(
                &Notice::Remediation {
                    agent_name: &name,
                    remediation,
                    latency_ns,
                    result: outcome,
                },
                format,
            ));
        }
    }

    /// Feeds the bytes each agent sent since the last tick to the risk engine.
    pub(super) fn assess_egress(
        &mut self,
        now_ns: u64,
        notices: &mut Vec<String>,
        format: OutputFormat,
    ) {
        let totals = match self.net.egress_bytes() {
            Ok(totals) => totals,
            Err(err) => {
                tracing::warn!(%err, "reading agents' egress bytes");
                return;
            }
        };
        for (index, total) in totals {
            let before = self.egress_seen.insert(index, total).unwrap_or(0);
            let Some(agent) = self.registry.agent(index) else {
                continue;
            };
            if total > before {
                let outcome = self.risk.observe(&risk::Observation {
                    agent: agent.id,
                    ktime_ns: now_ns,
                    kind: risk::ObservationKind::Egress {
                        bytes: total - before,
                    },
                });
                if !outcome.is_empty() {
                    self.conclude(&outcome, None, notices, format);
                }
            }
        }
    }

    /// Kills every process tagged with `agent`.
    fn kill_agent(&mut self, agent: AgentId) -> Result<(), RequestError> {
        let name = self.agent_name(agent);
        let found = self.agent_named(&name)?;
        let index = self.registry.intern_agent(&found);
        let tagged = self.process.tagged()?;
        for (pid, _) in tagged.into_iter().filter(|(_, tag)| tag.agent == index) {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: a plain signal; a pid that went away makes it fail harmlessly.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        Ok(())
    }

    pub(super) fn risk_request(
        &mut self,
        request: RiskRequest,
        format: OutputFormat,
    ) -> (String, Vec<String>) {
        let now = boottime_ns();
        let mut notices = Vec::new();
        let reply = match request {
            RiskRequest::Show { agent } => match self.agent_named(&agent) {
                Ok(found) => match self.risk.report(found.id) {
                    Some(report) => Reply::ok(report).to_line(),
                    None => Reply::ok(AgentRisk {
                        agent: found.id,
                        level: RiskLevel::None,
                        compromised: false,
                        quarantined: false,
                        learning_until_ns: None,
                        detections: Vec::new(),
                        transitions: Vec::new(),
                    })
                    .to_line(),
                },
                Err(err) => Reply::<()>::err(err.describe()).to_line(),
            },
            RiskRequest::Confirm { agent, compromised } => match self.agent_named(&agent) {
                Ok(found) => {
                    let outcome = if compromised {
                        self.risk.confirm_compromised(found.id, now)
                    } else {
                        self.risk.confirm_safe(found.id, now)
                    };
                    self.conclude(&outcome, None, &mut notices, format);
                    Reply::ok(self.risk.level(found.id)).to_line()
                }
                Err(err) => Reply::<()>::err(err.describe()).to_line(),
            },
            RiskRequest::Dismiss { detection } => {
                match self.risk.dismiss(DetectionId(detection), now) {
                    Ok(outcome) => {
                        self.conclude(&outcome, None, &mut notices, format);
                        Reply::ok(detection).to_line()
                    }
                    Err(err) => Reply::<()>::err(err.to_string()).to_line(),
                }
            }
        };
        (reply, notices)
    }
}
