//! Keel's resource model: the one set of types that the API, the store, the CLI, the console
//! and the generated OpenAPI document share.
//!
//! ```text
//!   request JSON ──serde──▶ typed body (newtypes validate while deserialising)
//!                              │ validate() for cross-field rules
//!                              ▼
//!                          keeld handler ──▶ store (JSON of these types)
//! ```
//!
//! Every resource is `metadata` + spec + status. Constrained values are newtypes ([`Name`],
//! [`SettingKey`], [`Cidr`]) that cannot be built invalid. Validation failures are
//! [`ValidationError`]s that carry the field path, so the API can say what was wrong.
//! This crate does no I/O.
#![warn(missing_docs)]
// Tests may unwrap (STYLE H13); the workspace lints deny it everywhere else.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod answer;
mod auth;
mod cidr;
mod cluster;
mod error;
mod event;
mod meta;
mod name;
mod node;
mod setting;

pub use answer::{
    AdminSection, AnswerFile, AnswerFileError, ClusterSection, ManagementNetwork, NetworkSection,
    NodeSection, ANSWER_FILE_VERSION,
};
pub use auth::{LoginRequest, LoginResponse};
pub use cidr::Cidr;
pub use cluster::{
    ClusterStatus, Health, JoinRequest, JoinResponse, Member, MemberRole, NodePhase, NodeState,
    RemoveNodeRequest,
};
pub use error::{ErrorBody, ErrorDetail, ValidationError};
pub use event::{WatchEvent, WatchOp};
pub use meta::Metadata;
pub use name::Name;
pub use node::{
    Accel, CpuInfo, DiskInfo, HostConfigItem, HostConfigStatus, HypervisorStatus, KvmState,
    MaintenancePhase, MaintenanceStatus, MemoryInfo, NicInfo, Node, NodeSpec, NodeStatus, Versions,
};
pub use setting::{Setting, SettingKey, SettingValue};

// Virtual machines, images and local storage (issue 3).
mod condition;
mod console;
mod hardware;
mod image;
mod mac;
mod new_metadata;
mod pool;
mod quantity;
mod snapshot;
mod task;
mod update;
mod upgrade;
mod vm;
mod vm_group;
mod vm_update;
mod volume;

pub use condition::{find_condition, set_condition, Condition, ConditionStatus};
pub use console::{ConsoleKind, ConsoleTicket, ConsoleTicketRequest};
pub use hardware::{Arch, DiskBus, Firmware, NicModel, OsType};
pub use image::{
    Checksum, Image, ImageCreate, ImageFormat, ImagePhase, ImageProgress, ImageSource, ImageSpec,
    ImageStatus, ImageUpdate,
};
pub use mac::MacAddr;
pub use new_metadata::{validate_labels, NewMetadata, MAX_LABELS};
pub use pool::{Pool, PoolCreate, PoolKind, PoolPhase, PoolSpec, PoolStatus, PoolUpdate};
pub use quantity::Bytes;
pub use snapshot::{
    snapshot_key, Snapshot, SnapshotCreate, SnapshotPhase, SnapshotSpec, SnapshotStatus, VmClone,
};
pub use task::{ObjectRef, Percent, ResourceKind, Task, TaskKind, TaskPhase, TaskSpec, TaskStatus};
pub use upgrade::{
    NodeUpgrade, NodeUpgradePhase, Upgrade, UpgradeBundle, UpgradeCreate, UpgradePhase,
    UpgradeSpec, UpgradeStatus,
};
pub use vm::{
    derived_mac, owned_volume_name, BootDevice, CloudInit, CpuModel, DiskSource, HaPolicy, HaSpec,
    PowerState, Vm, VmActions, VmCreate, VmDisk, VmHotplug, VmMigration, VmNic, VmPhase,
    VmPlacement, VmSpec, VmStatus, VmUsage,
};
pub use vm_group::{
    GroupPolicy, GroupStrength, VmGroup, VmGroupCreate, VmGroupSpec, VmGroupStatus, VmGroupUpdate,
};
pub use vm_update::{VmPlacementUpdate, VmRename, VmUpdate};
pub use volume::{
    local_pool_name, Qos, Volume, VolumeCreate, VolumeFormat, VolumePhase, VolumeResize,
    VolumeSpec, VolumeStatus, VolumeUpdate,
};
