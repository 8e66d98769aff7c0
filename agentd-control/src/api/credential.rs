//! `HostService.SignAgentSvid` and `SignAgentJwt`: an agent's X.509- and JWT-SVIDs, signed
//! for the host that runs it, with Conditional Access at issuance (the agent's lifecycle and
//! its current decision for that host); `GetJwtBundle`, the keys that verify the tokens;
//! `RenewHostCertificate`, a host's own mTLS certificate before it lapses.

use serde::Serialize;
use tonic::Status;

use super::{ControlPlane, limits, timestamp, validate};
use crate::{
    auth::Method,
    error::Error,
    model::{AgentState, ResolvedAgent, SvidLifetimes},
    proto,
    store::{
        AuditContext,
        auth::Caller,
        credentials::{HostRenewal, IssuedCredential, RefusedCredential},
    },
};

/// A CSR larger than this is refused before it is parsed.
const MAX_CSR_BYTES: usize = 16 * 1024;
/// The longest audience.
const MAX_AUDIENCE_CHARS: usize = 256;

/// A JWT-SVID's claims.
#[derive(Serialize)]
struct AgentClaims<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    sub: &'a str,
    aud: &'a [String],
    exp: i64,
    iat: i64,
    jti: &'a str,
    agent_name: &'a str,
    blueprint: &'a str,
    host_id: &'a str,
}

/// The audiences asked for, checked: 1 to 16, each 1 to 256 characters without control
/// characters.
fn audiences(asked: Vec<String>) -> Result<Vec<String>, Status> {
    if asked.is_empty() {
        return Err(Error::invalid("audience", "at least one audience is required").into());
    }
    limits::at_most("audience", asked.len(), limits::AUDIENCES)?;
    for (index, audience) in asked.iter().enumerate() {
        let field = format!("audience[{index}]");
        if audience.is_empty() || audience.chars().count() > MAX_AUDIENCE_CHARS {
            return Err(Error::invalid(
                &field,
                format!("must be 1 to {MAX_AUDIENCE_CHARS} characters"),
            )
            .into());
        }
        if audience.chars().any(char::is_control) {
            return Err(Error::invalid(&field, "holds a control character").into());
        }
    }
    Ok(asked)
}
/// A CSR, checked before it is parsed: present and at most [`MAX_CSR_BYTES`].
fn csr(pem: &str) -> Result<&str, Status> {
    if pem.trim().is_empty() {
        return Err(Error::invalid("csr_pem", "is required (a PKCS#10 CSR, PEM)").into());
    }
    if pem.len() > MAX_CSR_BYTES {
        return Err(Error::invalid(
            "csr_pem",
            format!("is {} bytes; at most {MAX_CSR_BYTES}", pem.len()),
        )
        .into());
    }
    Ok(pem)
}

/// An SVID is valid from a minute before it is signed, for hosts whose clocks run behind.
const BACKDATE: i64 = 60;

impl ControlPlane {
    pub(super) async fn sign_agent_svid(
        &self,
        caller: &Caller,
        request: proto::SignAgentSvidRequest,
    ) -> Result<proto::SignAgentSvidResponse, Status> {
        let agent_id = validate::uuid("agent_id", &request.agent_id)?;
        let csr_pem = csr(&request.csr_pem)?;
        let host_id = &caller.principal;
        let resolved = self
            .gate(caller, "x509-svid", "SignAgentSvidRefused", &agent_id)
            .await?;
        let now = self.now();
        let options = &self.credentials;
        let spiffe_id = options.trust_domain.agent_id(&agent_id);
        let lifetime =
            SvidLifetimes::or(resolved.svid_lifetimes.x509_seconds, options.x509_svid_ttl);
        let (not_before, not_after) = (now - BACKDATE, now + lifetime);
        let authorities = self.ca.current();
        let (certificate_pem, serial) = authorities
            .signer(now)
            .sign_svid_csr(csr_pem, &spiffe_id, not_before, not_after)?;
        let issued = IssuedCredential {
            kind: "x509-svid",
            agent_id,
            host_id: host_id.clone(),
            spiffe_id: spiffe_id.clone(),
            serial,
            audience: Vec::new(),
            not_before,
            not_after,
        };
        self.store
            .record_credential(&self.audit(caller, Method::SignAgentSvid), &issued)
            .await?;
        Ok(proto::SignAgentSvidResponse {
            spiffe_id,
            certificate_pem,
            bundle_pem: authorities.bundle_pem().to_owned(),
            expire_time: Some(timestamp(not_after)),
            trust_domain: options.trust_domain.to_string(),
        })
    }

    pub(super) async fn sign_agent_jwt(
        &self,
        caller: &Caller,
        request: proto::SignAgentJwtRequest,
    ) -> Result<proto::SignAgentJwtResponse, Status> {
        let agent_id = validate::uuid("agent_id", &request.agent_id)?;
        let audience = audiences(request.audience)?;
        let host_id = &caller.principal;
        let resolved = self
            .gate(caller, "jwt-svid", "SignAgentJwtRefused", &agent_id)
            .await?;
        let agent = &resolved.agent;
        let now = self.now();
        let options = &self.credentials;
        let spiffe_id = options.trust_domain.agent_id(&agent_id);
        let expires =
            now + SvidLifetimes::or(resolved.svid_lifetimes.jwt_seconds, options.jwt_svid_ttl);
        let jti = uuid::Uuid::new_v4().to_string();
        let token = self.jwt.current().sign(
            &AgentClaims {
                iss: options.jwt_issuer.as_deref(),
                sub: &spiffe_id,
                aud: &audience,
                exp: expires,
                iat: now,
                jti: &jti,
                agent_name: &agent.name,
                blueprint: &agent.blueprint,
                host_id,
            },
            now,
        )?;
        let issued = IssuedCredential {
            kind: "jwt-svid",
            agent_id,
            host_id: host_id.clone(),
            spiffe_id: spiffe_id.clone(),
            serial: jti,
            audience,
            not_before: now,
            not_after: expires,
        };
        self.store
            .record_credential(&self.audit(caller, Method::SignAgentJwt), &issued)
            .await?;
        Ok(proto::SignAgentJwtResponse {
            spiffe_id,
            token,
            expire_time: Some(timestamp(expires)),
            trust_domain: options.trust_domain.to_string(),
        })
    }

    /// A new client certificate for the calling host, for the key of its CSR. `authorize`
    /// has checked the token and, where host certificates are required, that the current
    /// certificate names this host; the store refuses a revoked host.
    pub(super) async fn renew_host_certificate(
        &self,
        caller: &Caller,
        request: proto::RenewHostCertificateRequest,
    ) -> Result<proto::RenewHostCertificateResponse, Status> {
        let csr_pem = csr(&request.csr_pem)?;
        let host_id = &caller.principal;
        let now = self.now();
        let not_after = now + self.credentials.host_cert_ttl;
        let authorities = self.ca.current();
        let (certificate_pem, serial) = authorities
            .signer(now)
            .sign_host_csr(csr_pem, host_id, now, not_after)?;
        let renewed = HostRenewal {
            cert_serial: serial,
            not_after: Some(not_after),
        };
        self.store
            .record_host_renewal(
                &self.audit(caller, Method::RenewHostCertificate),
                host_id,
                &renewed,
            )
            .await?;
        Ok(proto::RenewHostCertificateResponse {
            certificate_pem,
            ca_certificate_pem: authorities.bundle_pem().to_owned(),
            expire_time: Some(timestamp(not_after)),
        })
    }

    /// The published JWT keys.
    pub(super) fn jwt_bundle(&self) -> proto::GetJwtBundleResponse {
        proto::GetJwtBundleResponse {
            trust_domain: self.credentials.trust_domain.to_string(),
            jwks_json: self.jwt.current().jwks().to_string(),
        }
    }

    /// [`Self::may_hold_credential`] for the calling host; a refusal is audited (within the
    /// host's budget, `refusals`) as `refused_action` on the agent, with its reason.
    async fn gate(
        &self,
        caller: &Caller,
        kind: &'static str,
        refused_action: &'static str,
        agent_id: &str,
    ) -> Result<ResolvedAgent, Status> {
        let host_id = &caller.principal;
        let refusal = match self.may_hold_credential(host_id, agent_id).await {
            Ok(agent) => return Ok(agent),
            Err(refusal) => refusal,
        };
        let now = self.now();
        if let Some(left_out_before) = self.refusals.admit(host_id, now) {
            let audit = AuditContext {
                actor: caller.actor(),
                action: refused_action,
                now,
            };
            let refused = RefusedCredential {
                kind,
                agent_id: agent_id.to_owned(),
                host_id: host_id.clone(),
                code: format!("{:?}", refusal.code()),
                reason: refusal.message().to_owned(),
                left_out_before,
            };
            if let Err(err) = self.store.record_credential_refusal(&audit, &refused).await {
                tracing::warn!(error = %err, host = %host_id, agent = agent_id, "auditing a refused signing");
            }
        }
        Err(refusal)
    }

    /// Conditional Access at issuance: the agent exists, is created or active and not past its
    /// expiry, runs on `host_id` by the host's own report, and its current decision for that
    /// host is ALLOW. Each refusal says which. Returns the agent, resolved against its
    /// blueprint.
    async fn may_hold_credential(
        &self,
        host_id: &str,
        agent_id: &str,
    ) -> Result<ResolvedAgent, Status> {
        let resolved = match self.store.get_agent(agent_id).await {
            Ok(resolved) => resolved,
            Err(Error::NotFound { .. }) => {
                return Err(Error::invalid(
                    "agent_id",
                    format!("no registered agent has id {agent_id:?}"),
                )
                .into());
            }
            Err(err) => return Err(err.into()),
        };
        let agent = &resolved.agent;
        let refused = |why: String| -> Status {
            Error::FailedPrecondition(format!(
                "no credential for agent {} ({agent_id}): {why}",
                agent.name
            ))
            .into()
        };
        match agent.state {
            AgentState::Created | AgentState::Active => {}
            state => {
                let reason = if agent.disabled_reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", agent.disabled_reason)
                };
                return Err(refused(format!("it is {}{reason}", state.as_str())));
            }
        }
        let now = self.now();
        if let Some(expires_at) = agent.expires_at
            && expires_at <= now
        {
            return Err(refused(format!("it expired at {expires_at} (Unix time)")));
        }
        if !self.store.host_runs(host_id, agent_id).await? {
            return Err(refused(format!(
                "host {host_id} has not reported it running (ReportAgents)"
            )));
        }
        // Inputs no older than the watches' polling: a change made through another replica
        // counts as soon as that replica's hosts would see it.
        let fresh_after =
            tokio::time::Instant::now().checked_sub(self.decision_options.poll_interval);
        let set = self
            .current_decision_set(host_id, fresh_after)
            .await?
            .ok_or_else(|| Status::unauthenticated("the host was revoked"))?;
        let decision = set
            .decisions
            .iter()
            .find(|decision| decision.agent_id == agent_id)
            .ok_or_else(|| refused(format!("it has no decision for host {host_id}")))?;
        let action = proto::Action::try_from(decision.action).unwrap_or_default();
        if action != proto::Action::Allow {
            return Err(refused(format!(
                "its current decision for this host is {} (decision version {})",
                action.as_str_name().trim_start_matches("ACTION_"),
                set.version
            )));
        }
        Ok(resolved)
    }
}
