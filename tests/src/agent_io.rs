//! What tests have an agent's process do through the test helper, and what they read back
//! from agentd's event output, shared by the host, vm and fleet tiers.

use std::path::Path;

use crate::Daemon;

impl Daemon {
    /// `helper net tcp ADDR PORT COUNT` as `agent`: the helper's line
    /// (`ok=N eperm=N other=N`).
    pub fn tcp_connects(
        &self,
        helper: &Path,
        agent: &str,
        addr: &str,
        port: u16,
        count: u32,
    ) -> String {
        let output = self
            .launch(
                agent,
                &[
                    helper.to_str().expect("a UTF-8 helper path"),
                    "net",
                    "tcp",
                    addr,
                    &port.to_string(),
                    &count.to_string(),
                ],
            )
            .output()
            .expect("running the helper");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// One TCP connect as `agent`: true when it went through, false when it was refused with
    /// `EPERM`; any other outcome fails the test.
    pub fn connects(&self, helper: &Path, agent: &str, addr: &str, port: u16) -> bool {
        match self.tcp_connects(helper, agent, addr, port, 1).as_str() {
            "ok=1 eperm=0 other=0" => true,
            "ok=0 eperm=1 other=0" => false,
            other => panic!("helper said {other:?}"),
        }
    }

    /// Collects the JSON events printed so far into `seen`; true when one matches `pred`.
    pub fn saw(
        &self,
        seen: &mut Vec<serde_json::Value>,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> bool {
        seen.extend(
            self.events()
                .iter()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok()),
        );
        seen.iter().any(pred)
    }

    /// Quarantines `agent` (or releases it) through the admin socket, as `agentd quarantine`
    /// does.
    pub fn quarantine(&self, agent: &str, release: bool) -> agentd::api::Quarantined {
        agentd::api::admin::<agentd::api::Quarantined>(
            self.admin_socket(),
            &agentd::api::AdminRequest::Quarantine {
                agent: agent.to_owned(),
                release,
            },
        )
        .expect("quarantine")
    }
}
