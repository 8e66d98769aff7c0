//! The daemon's side of agentd's resolver: starting it, judging each query for the agent that
//! asked, and turning answers and domain rules into the kernel's learned destinations.

use std::{path::PathBuf, time::Instant};

use tokio::sync::mpsc;

use super::{error::DaemonError, state::State};
use crate::{
    config::DnsConfig,
    dns::{
        self, Answer, Request,
        admission::{self, Admission},
        learned::AgentRules,
    },
    sensors::SensorError,
};

impl State {
    /// Answers one request of the resolver.
    pub(super) fn on_dns(&mut self, request: Request) {
        match request {
            Request::Admit {
                cookie,
                name,
                decided,
            } => {
                let _ = decided.send(self.admit_dns(cookie, &name));
            }
            Request::Learn {
                agent,
                answer,
                installed,
            } => {
                let result = self.learn(agent, &answer);
                if let Err(err) = &result {
                    tracing::warn!(%err, name = %answer.name, "installing addresses from a DNS answer: the agent gets SERVFAIL");
                }
                let _ = installed.send(result.is_ok());
            }
        }
    }

    /// The agent that steered a query through socket `cookie`, and what may be done with it.
    /// A socket no agent steered, or an agent no longer in the policy, is refused.
    fn admit_dns(&self, cookie: u64, name: &str) -> Admission {
        let agent = match self.net.dns_asker(cookie) {
            Ok(Some(agent)) => agent,
            Ok(None) => return Admission::Refuse,
            Err(err) => {
                tracing::warn!(%err, "reading which agent sent a DNS query");
                return Admission::Refuse;
            }
        };
        let Some(compiled) = self
            .policy
            .agents
            .iter()
            .find(|compiled| self.registry.agent_index(&compiled.agent) == Some(agent))
        else {
            return Admission::Refuse;
        };
        // A quarantine that cannot be read counts as in force; an agent Conditional Access
        // blocks is cut off as a quarantined one is.
        let quarantined =
            self.net.is_quarantined(agent).unwrap_or(true) || self.ca.blocked.contains(&agent);
        admission::admit(agent, compiled.network.as_ref(), quarantined, name)
    }

    /// Records `agent`'s DNS answer and makes the domain rules that match it apply to its
    /// addresses. On failure (a full map) nothing of the answer stays learned.
    fn learn(&mut self, agent: u32, answer: &Answer) -> Result<(), SensorError> {
        let before = self.learned.clone();
        self.learned.record(agent, answer, Instant::now());
        let result = self.sync_learned();
        if result.is_err() {
            self.learned = before;
        }
        result
    }

    /// Makes the kernel's learned destinations match the unexpired answers and the domain rules
    /// in force. Where rules of one agent disagree on an address, deny wins.
    pub(super) fn sync_learned(&mut self) -> Result<(), SensorError> {
        self.learned.expire(Instant::now());
        let agents: Vec<_> = self
            .policy
            .agents
            .iter()
            .filter_map(|agent| {
                Some((agent.agent.clone(), agent.network.as_ref()?.domains.clone()))
            })
            .collect();
        let numbered: Vec<(u32, Vec<(crate::policy::network::DomainRule, u32)>)> = agents
            .into_iter()
            .map(|(agent, rules)| {
                let index = self.registry.intern_agent(&agent);
                let rules = rules
                    .into_iter()
                    .map(|rule| {
                        let number = self.registry.intern_rule(&rule.name);
                        (rule, number)
                    })
                    .collect();
                (index, rules)
            })
            .collect();
        let agents: Vec<AgentRules<'_>> = numbered
            .iter()
            .map(|(agent, rules)| AgentRules {
                agent: *agent,
                rules: rules.iter().map(|(rule, number)| (rule, *number)).collect(),
            })
            .collect();
        let (v4, v6) = self.learned.kernel_entries(&agents);
        self.net.set_learned(&v4, &v6)?;
        self.net.set_ca_learned(&crate::conditional::learned(
            &self.ca.domains,
            &self.learned.v4_by_name(),
        ))
    }
}

/// Starts agentd's resolver and steers agents' DNS to it, if DNS is enabled and an upstream is
/// known.
pub(super) async fn start_dns(
    config: &DnsConfig,
    state: &mut State,
    requests: mpsc::Sender<Request>,
) -> Result<Option<tokio::task::JoinHandle<()>>, DaemonError> {
    if !config.enabled {
        return Ok(None);
    }
    let upstream = config.upstream.or_else(|| {
        std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .and_then(|text| dns::upstream_from_resolv_conf(&text))
    });
    let Some(upstream) = upstream else {
        tracing::warn!("no DNS upstream (set dns.upstream): domain rules cannot learn addresses");
        return Ok(None);
    };
    let bind_error = |source| DaemonError::Bind {
        path: PathBuf::from(config.listen.to_string()),
        source,
    };
    let listener = tokio::net::UdpSocket::bind(config.listen)
        .await
        .map_err(bind_error)?;
    // Without the TCP side, the agents' DNS over TCP, still steered here, is refused by the
    // kernel (ECONNREFUSED): nothing goes past the resolver.
    let tcp = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(tcp) => Some(tcp),
        Err(err) => {
            tracing::warn!(%err, listen = %config.listen, "agents' DNS over TCP will fail: cannot listen for it");
            None
        }
    };
    state.net.set_dns_redirect(Some(config.listen))?;
    tracing::info!(listen = %config.listen, %upstream, "agents' DNS (UDP and TCP) goes through agentd");
    // Fail closed: a resolver that cannot tell which agent asks refuses every query rather
    // than forward what quarantine or the query filter would stop.
    let identify = match dns::peer::probe() {
        Ok(()) => true,
        Err(err) => {
            tracing::error!(%err, "agentd's resolver cannot tell which agent asks: agents' DNS queries are REFUSED");
            false
        }
    };
    let settings = dns::Settings {
        upstream,
        unallowed: config.unallowed_names,
        identify,
    };
    Ok(Some(tokio::spawn(async move {
        let udp = dns::serve(listener, settings, requests.clone());
        match tcp {
            Some(tcp) => {
                tokio::join!(udp, dns::serve_tcp(tcp, settings, requests));
            }
            None => udp.await,
        }
    })))
}
