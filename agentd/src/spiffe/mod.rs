//! Agent credentials on standard protocols: the SPIFFE Workload API that agentd serves to
//! tagged processes (`server`), and the X.509-SVIDs it holds for their agents (`svid`).

pub mod server;
pub mod svid;
