//! How a store is opened: where its files live, who it is, and the Raft timings.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::StoreError;
use crate::types::NodeId;

/// Everything [`crate::Store::open`] needs besides the network.
///
/// Build it with [`StoreConfig::new`] and override fields as needed; the defaults suit a LAN
/// cluster of 3 to 5 nodes.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory holding `raft.db`, `state.db` and `snapshot.db`. Created if missing.
    pub dir: PathBuf,
    /// This node's Raft id; must never change for a given `dir`.
    pub node_id: NodeId,
    /// The cluster's name; Raft refuses messages from a cluster of another name.
    pub cluster_name: String,
    /// How often the leader sends heartbeats. Default 100 ms.
    pub heartbeat: Duration,
    /// Lower bound of the randomized election timeout. Default 400 ms.
    pub election_min: Duration,
    /// Upper bound of the randomized election timeout. Default 800 ms.
    pub election_max: Duration,
    /// How long `write` and `barrier` wait for a quorum before `NoQuorum`. Default 3 s.
    pub write_timeout: Duration,
    /// Build a snapshot after this many log entries since the last one. Default 5000.
    pub snapshot_every: u64,
    /// Log entries kept after a snapshot, so briefly lagging followers catch up from the log
    /// instead of needing a snapshot. Default 1000.
    pub keep_logs: u64,
    /// Change-history rows kept for watches. Default 10000.
    pub keep_changes: u64,
}

impl StoreConfig {
    /// A config with the default timings.
    pub fn new(
        dir: impl Into<PathBuf>,
        node_id: NodeId,
        cluster_name: impl Into<String>,
    ) -> StoreConfig {
        StoreConfig {
            dir: dir.into(),
            node_id,
            cluster_name: cluster_name.into(),
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(400),
            election_max: Duration::from_millis(800),
            write_timeout: Duration::from_secs(3),
            snapshot_every: 5000,
            keep_logs: 1000,
            keep_changes: 10_000,
        }
    }

    /// The openraft configuration these settings stand for.
    pub(crate) fn raft_config(&self) -> Result<openraft::Config, StoreError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = openraft::Config {
            cluster_name: self.cluster_name.clone(),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_min),
            election_timeout_max: ms(self.election_max),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_logs,
            // A snapshot chunk must not time out on a loaded 2-core box.
            install_snapshot_timeout: ms(self.write_timeout).max(200),
            ..Default::default()
        };
        config.validate().map_err(|e| StoreError::Config {
            source: Box::new(e),
        })
    }
}
