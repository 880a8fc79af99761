//! [`Task`]: a long operation (import, migration, evacuation) that clients can watch.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use crate::{Metadata, Name, ValidationError};

/// A long operation. keeld creates tasks (clients never do) and the node doing the work
/// updates the status; `--wait` polls or watches it until it finishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    /// Name, uid, version, labels.
    pub metadata: Metadata,
    /// What to do, to what.
    pub spec: TaskSpec,
    /// How far it has come.
    #[serde(default)]
    pub status: TaskStatus,
}

/// What a task does, to what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The operation.
    pub kind: TaskKind,
    /// The resource it works on.
    pub target: ObjectRef,
    /// The node the work goes to, for operations that move things (`vm-migrate`,
    /// `image-copy`); none to let the scheduler choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Name>,
    /// Set to ask the task to stop; it ends `cancelled` if it could stop, or finishes
    /// normally if it was past the point of no return.
    #[serde(default)]
    pub cancel: bool,
}

/// The operations that run as tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// Download, copy or receive an image, verify and convert it.
    ImageImport,
    /// Copy a ready image to another node.
    ImageCopy,
    /// Create a volume (with its backing image on the node).
    VolumeCreate,
    /// Grow a volume.
    VolumeResize,
    /// Start a VM.
    VmStart,
    /// Shut a VM down gracefully (ACPI, then the guest agent), or force it off.
    VmStop,
    /// Reboot a VM.
    VmReboot,
    /// Live-migrate a VM to another node.
    VmMigrate,
    /// Delete a VM (and its own disks, when asked).
    VmDelete,
    /// Snapshot a VM's disks.
    VmSnapshot,
    /// Clone a stopped VM.
    VmClone,
    /// Move every VM off a node going into maintenance.
    NodeEvacuate,
}

/// A reference to a resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// The resource's kind.
    pub kind: ResourceKind,
    /// The resource's name.
    pub name: Name,
}

/// The kinds of resource, spelled as the store and the events stream spell them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
pub enum ResourceKind {
    /// [`crate::Image`].
    #[serde(rename = "images")]
    Image,
    /// [`crate::Pool`].
    #[serde(rename = "pools")]
    Pool,
    /// [`crate::Volume`].
    #[serde(rename = "volumes")]
    Volume,
    /// [`crate::Vm`].
    #[serde(rename = "vms")]
    Vm,
    /// [`crate::VmGroup`].
    #[serde(rename = "vm-groups")]
    VmGroup,
    /// [`crate::Node`].
    #[serde(rename = "nodes")]
    Node,
}

impl ResourceKind {
    /// The kind as the store, the events stream and the URL path spell it (`vms`).
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Image => "images",
            ResourceKind::Pool => "pools",
            ResourceKind::Volume => "volumes",
            ResourceKind::Vm => "vms",
            ResourceKind::VmGroup => "vm-groups",
            ResourceKind::Node => "nodes",
        }
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskPhase {
    /// Waiting to start.
    #[default]
    Pending,
    /// Working.
    Running,
    /// Done.
    Succeeded,
    /// Stopped by an error; `message` says which.
    Failed,
    /// Stopped because `spec.cancel` was set.
    Cancelled,
}

impl TaskPhase {
    /// Whether the task has finished (and will not change again).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskPhase::Succeeded | TaskPhase::Failed | TaskPhase::Cancelled
        )
    }
}

/// How far a task has come.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskStatus {
    /// Where the task is in its life.
    #[serde(default)]
    pub phase: TaskPhase,
    /// Percent done.
    #[serde(default)]
    pub progress: Percent,
    /// What it is doing, or why it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The node doing the work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When it started, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// When it finished, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// The step it is at, in the words of its kind (a migration: `preparing`,
    /// `destination-ready`, `transferring`, `switching-over`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub step: String,
    /// Bytes moved so far, for tasks that move data.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_done: u64,
    /// Bytes to move in all, as far as known (a live migration's total grows while it
    /// re-sends memory the guest dirtied).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_total: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A whole percentage, 0 to 100.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(u8);

impl utoipa::PartialSchema for Percent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .minimum(Some(0))
            .maximum(Some(100))
            .description(Some("A whole percentage, 0 to 100"))
            .into()
    }
}

impl ToSchema for Percent {}

impl Percent {
    /// Done.
    pub const DONE: Percent = Percent(100);

    /// Checks `value` (0 to 100) and wraps it.
    pub fn new(value: u8) -> Result<Self, ValidationError> {
        if value <= 100 {
            Ok(Self(value))
        } else {
            Err(ValidationError::new(
                "",
                format!("{value} is not a percentage; use 0 to 100"),
            ))
        }
    }

    /// `done` of `total`, rounded down (0 when `total` is 0).
    pub fn of(done: u64, total: u64) -> Self {
        if total == 0 {
            return Self(0);
        }
        let p = u128::from(done.min(total)) * 100 / u128::from(total);
        Self(p as u8)
    }

    /// The percentage.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.0)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(deserializer)?;
        u8::try_from(v)
            .map_err(|_| ())
            .and_then(|v| Percent::new(v).map_err(|_| ()))
            .map_err(|()| de::Error::custom(format!("{v} is not a percentage; use 0 to 100")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent() {
        assert_eq!(Percent::new(100).unwrap(), Percent::DONE);
        assert!(Percent::new(101).unwrap_err().message.contains("0 to 100"));
        assert_eq!(Percent::of(1, 3).get(), 33);
        assert_eq!(Percent::of(5, 0).get(), 0);
        assert_eq!(Percent::of(7, 5).get(), 100);
        assert_eq!(serde_json::from_str::<Percent>("42").unwrap().get(), 42);
        for bad in ["101", "300", "-1", "\"50\""] {
            assert!(serde_json::from_str::<Percent>(bad).is_err(), "{bad}");
        }
        assert_eq!(Percent::of(1, 2).to_string(), "50%");
    }

    #[test]
    fn task_round_trip() {
        let task: Task = serde_json::from_str(
            r#"{"metadata":{"name":"migrate-web-1"},
                "spec":{"kind":"vm-migrate","target":{"kind":"vms","name":"web"},"destination":"node2"},
                "status":{"phase":"running","progress":40,"node":"node1","started":"2024-01-01T00:00:00Z"}}"#,
        )
        .unwrap();
        assert_eq!(task.spec.kind, TaskKind::VmMigrate);
        assert_eq!(task.spec.target.kind.as_str(), "vms");
        assert!(!task.spec.cancel);
        assert!(!task.status.phase.is_finished());
        let json = serde_json::to_string(&task).unwrap();
        assert_eq!(serde_json::from_str::<Task>(&json).unwrap(), task);
        assert!(TaskPhase::Cancelled.is_finished());
        let err = serde_json::from_str::<Task>(
            r#"{"metadata":{"name":"t"},"spec":{"kind":"vm-start","target":{"kind":"vms","name":"x"}},"status":{"progress":150}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a percentage"), "{err}");
    }
}
