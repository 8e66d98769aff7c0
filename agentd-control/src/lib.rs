//! The agentd control plane: agent registry, governance, access packages, audit log, host
//! enrolment and API tokens, served over gRPC (`agentd.v1`). See docs/control-plane.md.

pub mod activity;
pub mod api;
pub mod audit_chain;
pub mod audit_export;
pub mod auth;
pub mod authorities;
pub mod ca;
pub mod clock;
pub mod credentials;
pub mod decisions;
pub mod duties;
pub mod error;
pub mod jwt;
pub mod listener;
pub mod model;
pub mod oidc;
pub mod policy;
pub mod risk;
pub mod rotation;
pub mod server;
pub mod store;
pub mod throttle;
pub mod tls;

/// The generated protobuf and gRPC code of the `agentd.v1` package (`agentd-proto`).
pub use agentd_proto::v1 as proto;
