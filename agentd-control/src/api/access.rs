//! `AccessService`: access packages.

use tonic::{Request, Response, Status};

use super::{ControlPlane, ensure_answers_for, limits, optional_timestamp, timestamp, validate};
use crate::{
    auth::Method,
    duties,
    error::Error,
    model::{
        AccessPackage, AccessPackageSpec, AccessPackageState, NewAccessPackage, Resource,
        ResourceKind, Role,
    },
    proto::{self, access_service_server::AccessService},
    store::access::Approver,
};

fn resources(field: &str, resources: &[proto::Resource]) -> Result<Vec<Resource>, Error> {
    if resources.is_empty() {
        return Err(Error::invalid(field, "at least one resource is required"));
    }
    limits::at_most(field, resources.len(), limits::PACKAGE_RESOURCES)?;
    resources
        .iter()
        .enumerate()
        .map(|(index, resource)| {
            let field = format!("{field}[{index}]");
            let kind = match validate::known_enum::<proto::ResourceKind>(
                &format!("{field}.kind"),
                resource.kind,
                false,
            )? {
                Some(proto::ResourceKind::NetworkDestination) => ResourceKind::NetworkDestination,
                Some(proto::ResourceKind::FilePath) => ResourceKind::FilePath,
                Some(proto::ResourceKind::McpServer) => ResourceKind::McpServer,
                _ => return Err(Error::invalid(format!("{field}.kind"), "is required")),
            };
            let value_field = format!("{field}.value");
            let value = match kind {
                ResourceKind::NetworkDestination => {
                    validate::destination(&value_field, &resource.value)?
                }
                ResourceKind::FilePath => validate::absolute_path(&value_field, &resource.value)?,
                ResourceKind::McpServer => validate::url(&value_field, &resource.value)?,
            };
            Ok(Resource { kind, value })
        })
        .collect()
}

fn state_to_proto(state: AccessPackageState) -> proto::AccessPackageState {
    match state {
        AccessPackageState::Pending => proto::AccessPackageState::Pending,
        AccessPackageState::Approved => proto::AccessPackageState::Approved,
        AccessPackageState::Active => proto::AccessPackageState::Active,
        AccessPackageState::Expired => proto::AccessPackageState::Expired,
        AccessPackageState::Denied => proto::AccessPackageState::Denied,
        AccessPackageState::Revoked => proto::AccessPackageState::Revoked,
    }
}

fn to_proto(package: &AccessPackage) -> proto::AccessPackage {
    proto::AccessPackage {
        id: package.id.clone(),
        agent_id: package.agent_id.clone(),
        resources: package
            .spec
            .resources
            .iter()
            .map(|resource| proto::Resource {
                kind: match resource.kind {
                    ResourceKind::NetworkDestination => proto::ResourceKind::NetworkDestination,
                    ResourceKind::FilePath => proto::ResourceKind::FilePath,
                    ResourceKind::McpServer => proto::ResourceKind::McpServer,
                }
                .into(),
                value: resource.value.clone(),
            })
            .collect(),
        justification: package.spec.justification.clone(),
        stages: package
            .stages
            .iter()
            .map(|stage| proto::ApprovalStage {
                approver: stage.approver.clone(),
                approved_by: stage.approved_by.clone().unwrap_or_default(),
                approve_time: optional_timestamp(stage.approved_at),
            })
            .collect(),
        state: state_to_proto(package.state).into(),
        start_time: Some(timestamp(package.starts_at)),
        expire_time: Some(timestamp(package.expires_at)),
        requested_by: package.requested_by.clone(),
        create_time: Some(timestamp(package.created_at)),
        update_time: Some(timestamp(package.updated_at)),
    }
}

#[tonic::async_trait]
impl AccessService for ControlPlane {
    async fn request_access_package(
        &self,
        request: Request<proto::RequestAccessPackageRequest>,
    ) -> Result<Response<proto::RequestAccessPackageResponse>, Status> {
        let caller = self
            .authorize(&request, Method::RequestAccessPackage)
            .await?;
        let request = request.into_inner();
        let mut new = NewAccessPackage {
            agent_id: validate::uuid("agent_id", &request.agent_id)?,
            spec: AccessPackageSpec {
                resources: resources("resources", &request.resources)?,
                justification: validate::required_text(
                    "justification",
                    &request.justification,
                    1024,
                )?,
            },
            approvers: {
                limits::at_most("approvers", request.approvers.len(), limits::APPROVERS)?;
                validate::principals("approvers", &request.approvers)?
            },
            starts_at: validate::time("start_time", request.start_time.as_ref())?,
            expires_at: validate::time("expire_time", request.expire_time.as_ref())?
                .ok_or_else(|| Error::invalid("expire_time", "is required"))?,
        };
        duties::check_approvers(&caller.principal, &new.approvers)?;
        if caller.role != Role::Admin {
            if new.approvers.is_empty() {
                return Err(Error::invalid(
                    "approvers",
                    "at least one approval stage is required unless an admin requests",
                )
                .into());
            }
            let agent = self.store.get_agent(&new.agent_id).await?;
            ensure_answers_for(&caller, &agent.agent)?;
            // An admin could grant at once; anyone else widening the admin-set allow-list
            // needs a second person who is an admin (see `duties`).
            let blueprint = self.store.get_blueprint(&agent.agent.blueprint).await?;
            if duties::widens(&new.spec.resources, &blueprint.spec.baseline_policy) {
                new.approvers.push(duties::ADMIN_STAGE.to_owned());
            }
        }
        let package = self
            .store
            .request_access_package(
                &self.audit(&caller, Method::RequestAccessPackage),
                &caller.principal,
                new,
            )
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::RequestAccessPackageResponse {
            access_package: Some(to_proto(&package)),
        }))
    }

    async fn approve_access_package(
        &self,
        request: Request<proto::ApproveAccessPackageRequest>,
    ) -> Result<Response<proto::ApproveAccessPackageResponse>, Status> {
        let caller = self
            .authorize(&request, Method::ApproveAccessPackage)
            .await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        let package = self
            .store
            .approve_access_package(
                &self.audit(&caller, Method::ApproveAccessPackage),
                &id,
                Approver {
                    principal: &caller.principal,
                    is_admin: caller.role == Role::Admin,
                },
            )
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::ApproveAccessPackageResponse {
            access_package: Some(to_proto(&package)),
        }))
    }

    async fn deny_access_package(
        &self,
        request: Request<proto::DenyAccessPackageRequest>,
    ) -> Result<Response<proto::DenyAccessPackageResponse>, Status> {
        let caller = self.authorize(&request, Method::DenyAccessPackage).await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        validate::text("reason", &request.get_ref().reason, 512)?;
        let package = self
            .store
            .deny_access_package(
                &self.audit(&caller, Method::DenyAccessPackage),
                &id,
                Approver {
                    principal: &caller.principal,
                    is_admin: caller.role == Role::Admin,
                },
            )
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::DenyAccessPackageResponse {
            access_package: Some(to_proto(&package)),
        }))
    }

    async fn revoke_access_package(
        &self,
        request: Request<proto::RevokeAccessPackageRequest>,
    ) -> Result<Response<proto::RevokeAccessPackageResponse>, Status> {
        let caller = self
            .authorize(&request, Method::RevokeAccessPackage)
            .await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        validate::text("reason", &request.get_ref().reason, 512)?;
        let package = self
            .store
            .revoke_access_package(&self.audit(&caller, Method::RevokeAccessPackage), &id)
            .await?;
        self.decisions_changed();
        Ok(Response::new(proto::RevokeAccessPackageResponse {
            access_package: Some(to_proto(&package)),
        }))
    }

    async fn get_access_package(
        &self,
        request: Request<proto::GetAccessPackageRequest>,
    ) -> Result<Response<proto::GetAccessPackageResponse>, Status> {
        self.authorize(&request, Method::GetAccessPackage).await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        let package = self.store.get_access_package(&id, self.now()).await?;
        Ok(Response::new(proto::GetAccessPackageResponse {
            access_package: Some(to_proto(&package)),
        }))
    }

    async fn list_access_packages(
        &self,
        request: Request<proto::ListAccessPackagesRequest>,
    ) -> Result<Response<proto::ListAccessPackagesResponse>, Status> {
        self.authorize(&request, Method::ListAccessPackages).await?;
        let request = request.into_inner();
        let agent_id = if request.agent_id.is_empty() {
            None
        } else {
            Some(validate::uuid("agent_id", &request.agent_id)?)
        };
        let state = match validate::known_enum::<proto::AccessPackageState>(
            "state",
            request.state,
            true,
        )? {
            None | Some(proto::AccessPackageState::Unspecified) => None,
            Some(proto::AccessPackageState::Pending) => Some(AccessPackageState::Pending),
            Some(proto::AccessPackageState::Approved) => Some(AccessPackageState::Approved),
            Some(proto::AccessPackageState::Active) => Some(AccessPackageState::Active),
            Some(proto::AccessPackageState::Expired) => Some(AccessPackageState::Expired),
            Some(proto::AccessPackageState::Denied) => Some(AccessPackageState::Denied),
            Some(proto::AccessPackageState::Revoked) => Some(AccessPackageState::Revoked),
        };
        let packages = self
            .store
            .list_access_packages(agent_id.as_deref(), state, self.now())
            .await?;
        Ok(Response::new(proto::ListAccessPackagesResponse {
            access_packages: packages.iter().map(to_proto).collect(),
        }))
    }
}
