//! Agent credentials on standard protocols: the SPIFFE Workload API that agentd serves to
//! tagged processes (`server`), the X.509-SVIDs it holds for their agents (`svid`), and their
//! JWT-SVIDs and the JWT bundle (`jwt`); `authority` lets gRPC C-core clients through.

pub mod authority;
pub mod client;
pub mod jwt;
pub mod server;
pub mod svid;
