//! The `agentd.v1` control-plane API as agentd uses it on each host: enrolment, heartbeats,
//! the Conditional Access decision stream, acknowledgements and detection reports. Generated
//! from `agentd-control/proto` by `build.rs`.

#![allow(clippy::pedantic, unused_qualifications, reason = "generated code")]

pub mod v1 {
    tonic::include_proto!("agentd.v1");
}
