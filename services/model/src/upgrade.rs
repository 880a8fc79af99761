//! [`Upgrade`]: a rolling A/B upgrade of the cluster's nodes to a signed image bundle, one
//! node at a time (docs/IMAGE.md, "Upgrades").
//!
//! ```text
//!   per node:  waiting ─▶ draining ─▶ installing ─▶ rebooting ─▶ blessed ─▶ done
//!                (leader: maintenance)  (node: writes   (node: back on the
//!                                       the other slot,  new version, healthy,
//!                                       reboots)         blesses its boot)
//!                                                    └─▶ rolled-back ─▶ failed (upgrade stops)
//! ```
//!
//! The leader writes the transitions it owns (waiting → draining → installing, blessed → done,
//! rolled-back → failed); the node being upgraded writes its own (installing → rebooting,
//! rebooting → blessed | rolled-back). Every transition is a compare-and-set write of this
//! record, so a new leader or a restarted node continues from what the record says.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Metadata;

/// A rolling upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Upgrade {
    /// Name (the upgrade id), uid, version.
    pub metadata: Metadata,
    /// What to install.
    pub spec: UpgradeSpec,
    /// How far it has come.
    #[serde(default)]
    pub status: UpgradeStatus,
}

/// What to install, where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UpgradeSpec {
    /// Image version of the bundle (from its signed manifest).
    pub version: String,
    /// SHA-256 of the bundle file.
    pub sha256: String,
    /// Bytes of the bundle file.
    pub size_bytes: u64,
    /// Install even when the bundle is not newer than what a node runs.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Boot tries of the new slot before systemd-boot falls back (default 3).
    #[serde(default = "default_tries")]
    pub tries: u32,
    /// Nodes in the order they are upgraded.
    pub nodes: Vec<String>,
    /// Node the bundle was uploaded to; the others copy it from there (or from any node that
    /// has it) over the peer channel and verify it again.
    #[serde(default)]
    pub source: String,
}

/// `POST /api/v1/upgrades`: upgrade the cluster to a bundle uploaded before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeCreate {
    /// SHA-256 of the uploaded bundle (`POST /api/v1/upgrade-bundles` returns it).
    pub bundle: String,
    /// Nodes to upgrade, in this order (default: every node, in name order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    /// Install even when the bundle is not newer than what a node runs.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Boot tries of the new slot before systemd-boot falls back (1-10, default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tries: Option<u32>,
}

/// An update bundle stored on a node, verified (signature, manifest, every payload hash).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UpgradeBundle {
    /// SHA-256 of the bundle file.
    pub sha256: String,
    /// Image version (from the signed manifest).
    pub version: String,
    /// Bytes of the bundle file.
    pub size_bytes: u64,
    /// Key id that signed it.
    #[serde(default)]
    pub key_id: String,
    /// Node that holds it.
    #[serde(default)]
    pub node: String,
}

fn default_tries() -> u32 {
    3
}

/// Where an upgrade stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UpgradeStatus {
    /// Overall phase.
    #[serde(default)]
    pub phase: UpgradePhase,
    /// What it waits for, and how to continue or roll back.
    #[serde(default)]
    pub message: String,
    /// One entry per node, in upgrade order.
    #[serde(default)]
    pub nodes: Vec<NodeUpgrade>,
}

/// Overall phase of an upgrade.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradePhase {
    /// Accepted; no node started yet.
    #[default]
    Pending,
    /// A node is being upgraded.
    Running,
    /// Every node runs the new version.
    Succeeded,
    /// Stopped: a node could not be upgraded or came back on its old version; `message`
    /// says which and what to do. Nodes not reached keep their version.
    Failed,
}

impl UpgradePhase {
    /// Nothing more happens.
    pub fn is_final(self) -> bool {
        matches!(self, UpgradePhase::Succeeded | UpgradePhase::Failed)
    }
}

/// One node's part of an upgrade.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeUpgrade {
    /// Node name.
    pub node: String,
    /// Where it is.
    #[serde(default)]
    pub phase: NodeUpgradePhase,
    /// Image version it ran before.
    #[serde(default)]
    pub from_version: String,
    /// Image version it reported last.
    #[serde(default)]
    pub running_version: String,
    /// Boot id (`/proc/sys/kernel/random/boot_id`) when it went to reboot; a different one
    /// means it has rebooted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
    /// When the current phase began (unix seconds).
    #[serde(default)]
    pub since: u64,
    /// What it waits for or what went wrong.
    #[serde(default)]
    pub message: String,
}

/// Where a node stands in an upgrade.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NodeUpgradePhase {
    /// Its turn has not come.
    #[default]
    Waiting,
    /// In maintenance: VMs are moving away.
    Draining,
    /// The node verifies the bundle and writes its inactive slot.
    Installing,
    /// The slot is written; the node reboots into it.
    Rebooting,
    /// Back on the new version, healthy, boot blessed.
    Blessed,
    /// Upgraded and out of maintenance.
    Done,
    /// Came back on its old version: the new slot did not come up and systemd-boot fell back.
    RolledBack,
    /// Could not be upgraded (`message` says why); its version is unchanged.
    Failed,
}
