use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{MemberRole, Metadata, NodeState};

/// A cluster member machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    /// Name, uid, version.
    pub metadata: Metadata,
    /// What the operator wants of the node.
    #[serde(default)]
    pub spec: NodeSpec,
    /// What the node and the leader report.
    #[serde(default)]
    pub status: NodeStatus,
}

/// What the operator wants of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeSpec {
    /// No new workloads are placed on a cordoned node.
    #[serde(default)]
    pub cordoned: bool,
    /// In maintenance: cordoned, and every VM is moved away (running ones live-migrated);
    /// `status.maintenance` tells how far that has come.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub maintenance: bool,
}

/// What a node reports about itself, and what the leader observed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeStatus {
    /// Raft node id.
    #[serde(default)]
    pub id: u64,
    /// Liveness as recorded by the leader.
    #[serde(default)]
    pub state: NodeState,
    /// Voter or learner in the replicated store.
    #[serde(default)]
    pub role: Option<MemberRole>,
    /// Management address (no prefix).
    #[serde(default)]
    pub address: String,
    /// HTTPS API endpoint, e.g. `https://10.0.0.11:8443`.
    #[serde(default)]
    pub api: String,
    /// Last heartbeat the leader saw, RFC 3339.
    #[serde(default)]
    pub last_heartbeat: Option<String>,
    /// Hostname.
    #[serde(default)]
    pub hostname: String,
    /// Processors.
    #[serde(default)]
    pub cpu: CpuInfo,
    /// Memory.
    #[serde(default)]
    pub memory: MemoryInfo,
    /// Block devices.
    #[serde(default)]
    pub disks: Vec<DiskInfo>,
    /// Network interfaces.
    #[serde(default)]
    pub nics: Vec<NicInfo>,
    /// Software versions.
    #[serde(default)]
    pub versions: Versions,
    /// How far emptying the node for maintenance has come (while `spec.maintenance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceStatus>,
    /// Domains in the node's hypervisor that no VM of the store accounts for, by name.
    /// Keel reports them and never touches them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmanaged_domains: Vec<String>,
    /// How guests run on this node (absent until its hypervisor answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<HypervisorStatus>,
    /// The host configuration the node generated from the settings (its `/etc` files) and
    /// whether each part is applied (absent where keeld does not manage the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_config: Option<HostConfigStatus>,
}

/// The `/etc` files a node generates from the cluster's settings (keeld's `hostconf`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostConfigStatus {
    /// Every managed part, in a fixed order.
    #[serde(default)]
    pub items: Vec<HostConfigItem>,
}

/// One managed part of a node's host configuration, e.g. its NTP servers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostConfigItem {
    /// What it is: `ntp`, `dns`, `timezone`, `hostname` or `hosts`.
    pub name: String,
    /// The file on the node, e.g. `/etc/chrony/sources.d/keel.sources`.
    pub path: String,
    /// The setting the value came from (the node's own `KEY.<node>` first), or `default`.
    pub source: String,
    /// The value in effect, e.g. `ntp1.example.com 10.0.0.1`.
    #[serde(default)]
    pub value: String,
    /// Whether the file holds the value and the host took it.
    pub applied: bool,
    /// Why it is not applied (the file or host action that failed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// How guests run on a node: hardware-assisted (KVM) or emulated (TCG), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HypervisorStatus {
    /// What new domains on this node use.
    pub accel: Accel,
    /// What the KVM probe found (a real guest run, not just opening /dev/kvm).
    pub kvm: KvmState,
    /// Why guests are emulated, when they are (a warning: emulated guests are much slower).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// How guests are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware-assisted virtualisation.
    Kvm,
    /// Emulation (QEMU's TCG): works everywhere, much slower.
    Tcg,
}

/// What the KVM probe found on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KvmState {
    /// A test guest ran under KVM.
    Usable,
    /// There is no KVM device.
    Missing,
    /// KVM is there but a test guest did not run (the message says what happened).
    Broken,
}

/// How far emptying a node for maintenance has come.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MaintenanceStatus {
    /// Where it is.
    pub phase: MaintenancePhase,
    /// VMs still bound to the node.
    #[serde(default)]
    pub vms_remaining: u32,
    /// What it waits for, or why a VM cannot leave.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Where emptying a node stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MaintenancePhase {
    /// VMs are being moved away.
    #[default]
    Evacuating,
    /// Some VMs cannot leave (pinned, or no other node can take them); `message` says why.
    Blocked,
    /// No VM is bound to the node: it can be serviced.
    Empty,
}

/// Processors of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CpuInfo {
    /// Logical CPUs.
    pub count: u32,
    /// Model name.
    pub model: String,
}

/// Memory of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MemoryInfo {
    /// Total bytes.
    pub total_bytes: u64,
    /// Available bytes when last reported.
    pub available_bytes: u64,
}

/// A block device of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiskInfo {
    /// Kernel name, e.g. `sda`.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Model, when the device reports one.
    pub model: String,
    /// Rotational (spinning) disk.
    pub rotational: bool,
}

/// A network interface of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NicInfo {
    /// Interface name.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// Operational state (`up`, `down`, ...).
    pub state: String,
    /// MTU.
    pub mtu: u32,
    /// Link speed in Mbit/s, when known.
    pub speed_mbps: Option<u32>,
    /// Addresses in CIDR notation.
    pub addresses: Vec<String>,
}

/// Software versions on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Versions {
    /// keeld version.
    pub keel: String,
    /// Kernel release.
    pub kernel: String,
    /// Operating system (PRETTY_NAME of os-release).
    pub os: String,
}
