//! An admin's clients of a benchmark's `agentd-control serve`: blueprints and enabled agents
//! for the rows whose hosts need registered agents (12 and 13), and join tokens.

use agentd_control::proto::{
    self, governance_service_client::GovernanceServiceClient,
    registry_service_client::RegistryServiceClient,
};
use anyhow::Context as _;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::control::{Bearer, HostClient, Server, bearer};

type Authed = InterceptedService<Channel, Bearer>;

/// The blueprint every benchmark agent belongs to.
pub const BLUEPRINT: &str = "bench";

#[derive(Clone)]
pub struct Admin {
    registry: RegistryServiceClient<Authed>,
    governance: GovernanceServiceClient<Authed>,
    /// Join tokens (`control::enrol` takes it).
    pub host: HostClient,
}

impl Admin {
    /// Connects with the server's admin token and creates [`BLUEPRINT`].
    pub async fn connect(server: &Server) -> anyhow::Result<Self> {
        let channel = server.connect().await?;
        let token = bearer(&server.admin_token)?;
        let mut admin = Self {
            registry: RegistryServiceClient::with_interceptor(channel.clone(), token.clone()),
            governance: GovernanceServiceClient::with_interceptor(channel.clone(), token.clone()),
            host: proto::host_service_client::HostServiceClient::with_interceptor(channel, token),
        };
        admin
            .registry
            .create_blueprint(proto::CreateBlueprintRequest {
                blueprint: Some(proto::Blueprint {
                    name: BLUEPRINT.into(),
                    ..Default::default()
                }),
            })
            .await
            .context("CreateBlueprint")?;
        Ok(admin)
    }

    /// A new agent `name` of [`BLUEPRINT`], enabled. Returns its id.
    pub async fn enabled_agent(&mut self, name: &str) -> anyhow::Result<String> {
        let agent = self
            .registry
            .create_agent(proto::CreateAgentRequest {
                name: name.into(),
                blueprint: BLUEPRINT.into(),
                sponsors: vec!["bench@localhost".into()],
                ..Default::default()
            })
            .await
            .context("CreateAgent")?
            .into_inner()
            .agent
            .context("CreateAgent returned no agent")?;
        self.governance
            .enable_agent(proto::EnableAgentRequest {
                id: agent.id.clone(),
            })
            .await
            .context("EnableAgent")?;
        Ok(agent.id)
    }
}
