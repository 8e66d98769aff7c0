//! Role-based access control: which role may call which method. docs/control-plane.md shows
//! this table; object-level rules (a sponsor acts only on agents it sponsors or owns) are
//! checked by the services on top.

use crate::model::Role::{self, Admin, Auditor, Host, Sponsor};

macro_rules! methods {
    ($($service:literal { $($method:ident => [$($role:ident),*]),+ $(,)? })+) => {
        /// Every RPC of the `agentd.v1` services.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Method { $($($method),+),+ }

        impl Method {
            pub const ALL: &[Self] = &[$($(Self::$method),+),+];

            /// The roles allowed to call the method.
            pub fn roles(self) -> &'static [Role] {
                match self { $($(Self::$method => &[$($role),*]),+),+ }
            }

            /// `Service/Method`, e.g. `RegistryService/CreateAgent`.
            pub fn path(self) -> &'static str {
                match self { $($(Self::$method => concat!($service, "/", stringify!($method))),+),+ }
            }

            pub fn name(self) -> &'static str {
                match self { $($(Self::$method => stringify!($method)),+),+ }
            }
        }
    };
}

methods! {
    "RegistryService" {
        CreateBlueprint => [Admin],
        GetBlueprint => [Admin, Sponsor, Auditor],
        ListBlueprints => [Admin, Sponsor, Auditor],
        UpdateBlueprint => [Admin],
        DeleteBlueprint => [Admin],
        CreateAgent => [Admin],
        GetAgent => [Admin, Sponsor, Auditor],
        ListAgents => [Admin, Sponsor, Auditor],
        UpdateAgent => [Admin, Sponsor],
        DeleteAgent => [Admin],
    }
    "GovernanceService" {
        EnableAgent => [Admin, Sponsor],
        DisableAgent => [Admin, Sponsor],
        ReconfirmAgent => [Admin, Sponsor],
        AddPrincipal => [Admin],
        RemovePrincipal => [Admin],
        ListAlerts => [Admin, Sponsor, Auditor],
        RunSweep => [Admin],
    }
    "AccessService" {
        RequestAccessPackage => [Admin, Sponsor],
        ApproveAccessPackage => [Admin, Sponsor],
        DenyAccessPackage => [Admin, Sponsor],
        RevokeAccessPackage => [Admin],
        GetAccessPackage => [Admin, Sponsor, Auditor],
        ListAccessPackages => [Admin, Sponsor, Auditor],
    }
    "AuditService" {
        ListAuditEvents => [Admin, Auditor],
    }
    "HostService" {
        CreateJoinToken => [Admin],
        EnrollHost => [],
        Heartbeat => [Host],
        ReportAgents => [Host],
        GetHost => [Admin, Auditor],
        ListHosts => [Admin, Sponsor, Auditor],
        RevokeHost => [Admin],
        SetHostLabels => [Admin],
        WatchDecisions => [Host],
        AckDecisions => [Host],
        ReportDetections => [Host],
        SignAgentSvid => [Host],
        SignAgentJwt => [Host],
        GetJwtBundle => [Host],
        RenewHostCertificate => [Host],
    }
    "PolicyService" {
        CreatePolicy => [Admin],
        UpdatePolicy => [Admin],
        GetPolicy => [Admin, Auditor],
        ListPolicies => [Admin, Auditor],
        ListPolicyVersions => [Admin, Auditor],
        DeletePolicy => [Admin],
        SetPolicyState => [Admin],
        WhatIf => [Admin, Auditor],
    }
    "RiskService" {
        GetAgentRisk => [Admin, Sponsor, Auditor],
        ListDetections => [Admin, Sponsor, Auditor],
        ConfirmAgentCompromised => [Admin],
        ConfirmAgentSafe => [Admin],
    }
    "AuthService" {
        CreateApiToken => [Admin],
        ListApiTokens => [Admin, Auditor],
        RevokeApiToken => [Admin],
        WhoAmI => [Admin, Sponsor, Auditor, Host],
    }
    "CredentialService" {
        RotateJwtSigningKey => [Admin],
        ListJwtSigningKeys => [Admin, Auditor],
        RetireJwtSigningKey => [Admin],
        RotateCertificateAuthority => [Admin],
        ListCertificateAuthorities => [Admin, Auditor],
        RetireCertificateAuthority => [Admin],
    }
}

impl Method {
    /// Methods that authenticate by something other than a bearer token (`EnrollHost`: the join
    /// token).
    pub fn is_public(self) -> bool {
        self == Self::EnrollHost
    }

    pub fn allows(self, role: Role) -> bool {
        self.roles().contains(&role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_enroll_host_has_no_roles() {
        for method in Method::ALL {
            assert_eq!(method.roles().is_empty(), method.is_public(), "{method:?}");
        }
    }

    #[test]
    fn auditors_change_nothing() {
        let readers = ["Get", "List", "WhoAmI", "WhatIf"];
        for method in Method::ALL {
            if method.allows(Auditor) {
                assert!(
                    readers
                        .iter()
                        .any(|prefix| method.name().starts_with(prefix)),
                    "auditor may call {method:?}"
                );
            }
        }
    }
}
