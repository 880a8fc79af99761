//! `keel bench`: numbers behind the targets in docs/SPEC.md (H18).
//!
//! `bench api` measures setting writes and reads (sequential, then 8 concurrent clients)
//! against any endpoint; `bench cluster` brings up its own dev cluster, times formation, runs
//! the API pass, kills the leader like a power cut, times the first accepted write through a
//! survivor, reports keeld's memory, and tears the cluster down.

pub mod api;
pub mod cluster;
pub mod stats;
