//! [`Snapshot`]: a point-in-time copy of a VM's disks, and the bodies of the VM storage
//! actions (snapshot, clone).
//!
//! ```text
//!  POST /vms/{vm}/snapshots {name} ─▶ Snapshot{phase: pending}
//!      the VM's node: running ─▶ guest agent freeze (when one answers) ─▶ libvirt internal
//!                                snapshot (disks + memory, in the qcow2) ─▶ thaw (always)
//!                     stopped ─▶ qemu-img snapshot -c on every disk ─▶ ready
//!  POST /vms/{vm}/snapshots/{name}/revert (VM stopped) ─▶ qemu-img snapshot -a on every disk
//!  DELETE /vms/{vm}/snapshots/{name} (VM stopped)      ─▶ qemu-img snapshot -d ─▶ record gone
//! ```

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Metadata, Name};

/// A snapshot of a VM's disks, kept inside the disks' qcow2 files on the VM's node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    /// `name` is the snapshot's own name; uid, version, creation time.
    pub metadata: Metadata,
    /// Which VM.
    pub spec: SnapshotSpec,
    /// Where the snapshot is in its life.
    #[serde(default)]
    pub status: SnapshotStatus,
}

/// Which VM a snapshot belongs to, and what was asked of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotSpec {
    /// The VM.
    pub vm: Name,
    /// Bumped by each revert request; the node reverts while it is ahead of
    /// `status.reverted`.
    #[serde(default)]
    pub revert_generation: u64,
}

/// Where a snapshot is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotPhase {
    /// Waiting for the VM's node to take it.
    #[default]
    Pending,
    /// Taken; can be reverted to.
    Ready,
    /// Its node could not take (or revert to) it; `message` says why.
    Failed,
}

/// What a snapshot is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotStatus {
    /// Where the snapshot is in its life.
    #[serde(default)]
    pub phase: SnapshotPhase,
    /// The volumes it covers (the VM's disks when it was taken).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Taken while the VM ran (the guest's memory is in it too).
    #[serde(default)]
    pub live: bool,
    /// The guest's file systems were frozen through qemu-guest-agent while it was taken
    /// (consistent on disk); false: crash-consistent (no agent answered, or the VM was
    /// stopped, when there is nothing to freeze).
    #[serde(default)]
    pub frozen: bool,
    /// When it was taken (RFC 3339).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub taken: String,
    /// The last revert the node carried out (see `spec.revert_generation`).
    #[serde(default)]
    pub reverted: u64,
    /// Why the last operation failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// `POST /api/v1/vms/{name}/snapshots`: take a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// The snapshot's name, unique per VM (a DNS label: `a-z 0-9 -`).
    pub name: Name,
}

/// `POST /api/v1/vms/{name}/clone`: a new VM with copies of a stopped VM's (or a
/// template's) disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmClone {
    /// The new VM's name.
    pub name: Name,
    /// Start the new VM once its disks are copied (default: leave it stopped).
    #[serde(default)]
    pub start: bool,
}

/// The store name of snapshot `snapshot` of VM `vm`: `<vm>.<snapshot>` (a dot never
/// appears in a [`Name`], so this is unambiguous).
pub fn snapshot_key(vm: &str, snapshot: &str) -> String {
    format!("{vm}.{snapshot}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_validate_names() {
        let ok: SnapshotCreate = serde_json::from_str(r#"{"name":"before-upgrade"}"#).unwrap();
        assert_eq!(ok.name.as_str(), "before-upgrade");
        for bad in [
            r#"{"name":"Not DNS"}"#,
            r#"{"name":"a.b"}"#,
            r#"{"name":""}"#,
            r#"{}"#,
            r#"{"name":"x","extra":1}"#,
        ] {
            assert!(
                serde_json::from_str::<SnapshotCreate>(bad).is_err(),
                "{bad}"
            );
        }
        let c: VmClone = serde_json::from_str(r#"{"name":"web2"}"#).unwrap();
        assert!(!c.start);
        assert!(serde_json::from_str::<VmClone>(r#"{"name":"Web_2"}"#).is_err());
    }

    #[test]
    fn keys_are_unambiguous() {
        assert_eq!(snapshot_key("web", "s1"), "web.s1");
        let snap = Snapshot {
            metadata: Metadata {
                name: "s1".into(),
                ..Metadata::default()
            },
            spec: SnapshotSpec {
                vm: Name::new("web").unwrap(),
                revert_generation: 0,
            },
            status: SnapshotStatus::default(),
        };
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["status"]["phase"], "pending");
        assert_eq!(serde_json::from_value::<Snapshot>(json).unwrap(), snap);
    }
}
