//! `AuthService`: API tokens.

use tonic::{Request, Response, Status};

use super::{ControlPlane, role_to_proto, timestamp, validate};
use crate::{
    auth::Method,
    error::Error,
    model::{ApiToken, Role},
    proto::{self, auth_service_server::AuthService},
};

fn to_proto(token: ApiToken) -> proto::ApiToken {
    proto::ApiToken {
        id: token.id,
        name: token.name,
        role: role_to_proto(token.role).into(),
        principal: token.principal,
        create_time: Some(timestamp(token.created_at)),
        revoked: token.revoked_at.is_some(),
    }
}

#[tonic::async_trait]
impl AuthService for ControlPlane {
    async fn create_api_token(
        &self,
        request: Request<proto::CreateApiTokenRequest>,
    ) -> Result<Response<proto::CreateApiTokenResponse>, Status> {
        let caller = self.authorize(&request, Method::CreateApiToken).await?;
        let request = request.into_inner();
        let name = validate::required_text("name", &request.name, 128)?;
        let role = match validate::known_enum::<proto::Role>("role", request.role, false)? {
            Some(proto::Role::Admin) => Role::Admin,
            Some(proto::Role::Sponsor) => Role::Sponsor,
            Some(proto::Role::Auditor) => Role::Auditor,
            Some(proto::Role::Host) => {
                return Err(Error::invalid(
                    "role",
                    "host tokens are issued by EnrollHost, with a join token",
                )
                .into());
            }
            _ => return Err(Error::invalid("role", "is required").into()),
        };
        let principal = validate::principal("principal", &request.principal)?;
        let (token, secret) = self
            .store
            .create_api_token(
                &self.audit(&caller, Method::CreateApiToken),
                &name,
                role,
                &principal,
            )
            .await?;
        Ok(Response::new(proto::CreateApiTokenResponse {
            api_token: Some(to_proto(token)),
            token: secret,
        }))
    }

    async fn list_api_tokens(
        &self,
        request: Request<proto::ListApiTokensRequest>,
    ) -> Result<Response<proto::ListApiTokensResponse>, Status> {
        self.authorize(&request, Method::ListApiTokens).await?;
        let tokens = self.store.list_api_tokens().await?;
        Ok(Response::new(proto::ListApiTokensResponse {
            api_tokens: tokens.into_iter().map(to_proto).collect(),
        }))
    }

    async fn revoke_api_token(
        &self,
        request: Request<proto::RevokeApiTokenRequest>,
    ) -> Result<Response<proto::RevokeApiTokenResponse>, Status> {
        let caller = self.authorize(&request, Method::RevokeApiToken).await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        let token = self
            .store
            .revoke_api_token(&self.audit(&caller, Method::RevokeApiToken), &id)
            .await?;
        Ok(Response::new(proto::RevokeApiTokenResponse {
            api_token: Some(to_proto(token)),
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::WhoAmIResponse>, Status> {
        let caller = self.authorize(&request, Method::WhoAmI).await?;
        Ok(Response::new(proto::WhoAmIResponse {
            role: role_to_proto(caller.role).into(),
            principal: caller.principal,
            token_id: caller.token_id,
        }))
    }
}
