//! `keel bench`: numbers behind the targets in docs/SPEC.md (H18).
//!
//! `bench api` measures setting writes and reads (sequential, then 8 concurrent clients)
//! against any endpoint; `bench cluster` brings up its own dev cluster, times formation, runs
//! the API pass, kills the leader like a power cut, times the first accepted write through a
//! survivor, reports keeld's memory, and tears the cluster down. `bench vm` brings up a dev
//! cluster with libvirt and times VM creation against `virsh create`, 50 concurrent VMs and
//! keeld's memory per VM.

pub mod api;
pub mod cluster;
pub mod stats;
pub mod vm;
