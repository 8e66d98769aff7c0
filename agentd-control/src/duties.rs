//! Separation of duties: who may approve which access package, and which agent fields only an
//! admin may change. Pure rules over domain types; the API and the store apply them (see
//! docs/control-plane.md, "Separation of duties").

use crate::{
    error::{Error, Result},
    model::{AccessPackage, Agent, AgentUpdate, BaselinePolicy, Resource, ResourceKind},
};

/// The approver of the stage that the server appends to a widening request: any admin who is
/// neither the requester nor the decider of an earlier stage.
pub const ADMIN_STAGE: &str = "role:admin";

/// Whether a package grants more than the admin-set allow-list already allows the agent: any
/// file path, any MCP server, and any network destination not listed verbatim in the
/// blueprint's baseline `allowed_destinations`.
#[must_use]
pub fn widens(resources: &[Resource], baseline: &BaselinePolicy) -> bool {
    resources.iter().any(|resource| {
        resource.kind != ResourceKind::NetworkDestination
            || !baseline.allowed_destinations.contains(&resource.value)
    })
}

/// Refuses a request whose approvers include the requester or name the reserved admin stage.
pub fn check_approvers(requester: &str, approvers: &[String]) -> Result<()> {
    for (index, approver) in approvers.iter().enumerate() {
        let field = format!("approvers[{index}]");
        if approver == requester {
            return Err(Error::invalid(
                field,
                format!("{approver:?} is the requester; no one approves their own request"),
            ));
        }
        if approver.starts_with("role:") {
            return Err(Error::invalid(
                field,
                format!("{approver:?}: approvers starting with \"role:\" are reserved"),
            ));
        }
    }
    Ok(())
}

/// Who is deciding on an approval stage.
#[derive(Clone, Copy, Debug)]
pub struct Approver<'a> {
    pub principal: &'a str,
    /// Admins may decide any stage (but not their own request, nor two stages of one package).
    pub is_admin: bool,
}

/// What an approver decides on a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Approve,
    /// Grants nothing, so only the stage's authority is checked.
    Deny,
}

/// Whether `approver` may decide stage `stage` of `package`: the stage's named approver (or an
/// admin; only an admin for [`ADMIN_STAGE`]), and to approve, neither the requester nor the
/// approver of another stage.
pub fn check_decider(
    package: &AccessPackage,
    stage: usize,
    approver: Approver<'_>,
    decision: Decision,
) -> Result<()> {
    if decision == Decision::Approve {
        check_second_person(package, approver)?;
    }
    let expected = &package.stages[stage].approver;
    let allowed = if expected == ADMIN_STAGE {
        approver.is_admin
    } else {
        approver.is_admin || approver.principal == expected
    };
    if !allowed {
        return Err(Error::PermissionDenied(format!(
            "stage {} of access package {} is for {expected:?}, not {:?}",
            stage + 1,
            package.id,
            approver.principal
        )));
    }
    Ok(())
}

fn check_second_person(package: &AccessPackage, approver: Approver<'_>) -> Result<()> {
    if approver.principal == package.requested_by {
        return Err(Error::PermissionDenied(format!(
            "{:?} requested access package {}; no one approves their own request",
            approver.principal, package.id
        )));
    }
    if package
        .stages
        .iter()
        .any(|s| s.approved_by.as_deref() == Some(approver.principal))
    {
        return Err(Error::PermissionDenied(format!(
            "{:?} already approved a stage of access package {}; each stage needs another person",
            approver.principal, package.id
        )));
    }
    Ok(())
}

/// Refuses a non-admin's change to a field that policies and governance rely on, naming the
/// first such field: the agent's attributes (policies select on them), offline behaviour, expiry
/// and governance periods.
pub fn check_owner_update(current: &Agent, update: &AgentUpdate) -> Result<()> {
    let AgentUpdate {
        id: _,
        description: _,
        metadata: _,
        attributes,
        governance,
        expires_at,
        offline_behavior,
    } = update;
    let changed = if *attributes != current.attributes {
        Some("attributes")
    } else if *offline_behavior != current.offline_behavior {
        Some("offline_behavior")
    } else if *expires_at != current.expires_at {
        Some("expire_time")
    } else if *governance != current.governance {
        Some("governance")
    } else {
        None
    };
    match changed {
        Some(field) => Err(Error::PermissionDenied(format!(
            "field `{field}` of agent {} may be changed only by an admin (separation of duties)",
            current.id
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DefaultAction;

    fn net(value: &str) -> Resource {
        Resource {
            kind: ResourceKind::NetworkDestination,
            value: value.into(),
        }
    }

    #[test]
    fn only_destinations_on_the_baseline_allow_list_do_not_widen() {
        let baseline = BaselinePolicy {
            network_default: DefaultAction::Deny,
            allowed_destinations: vec!["db.example.com:5432".into()],
            protected_paths: Vec::new(),
        };
        assert!(!widens(&[net("db.example.com:5432")], &baseline));
        assert!(widens(&[net("0.0.0.0/0")], &baseline));
        assert!(widens(
            &[Resource {
                kind: ResourceKind::FilePath,
                value: "/srv".into()
            }],
            &baseline
        ));
    }

    #[test]
    fn the_requester_cannot_be_an_approver() {
        let err = check_approvers("alice", &["bob".into(), "alice".into()]).unwrap_err();
        assert!(err.to_string().contains("approvers[1]"), "{err}");
        assert!(check_approvers("alice", &["role:admin".into()]).is_err());
        check_approvers("alice", &["bob".into()]).unwrap();
    }
}
