//! [`Vm`]: a virtual machine.
//!
//! ```text
//!   VmCreate ──validate──▶ Vm{spec, status: pending}
//!        leader scheduler: spec.placement + capacity ──▶ status.node   (the binding)
//!        that node's reconciler: spec ──▶ libvirt domain ──▶ status.phase, ips, usage
//! ```
//!
//! `spec.placement.node` is a *pin* (where the VM must run); `status.node` is the *binding*
//! (where it runs or is about to), written by the scheduler. A node's reconciler drives the
//! VMs bound to it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use crate::volume::check_disk_size;
use crate::{
    validate_labels, Bytes, Condition, DiskBus, Firmware, MacAddr, Metadata, Name, NewMetadata,
    NicModel, Qos, ValidationError,
};

#[cfg(test)]
mod tests;

/// A virtual machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    /// Name, uid, version, labels.
    pub metadata: Metadata,
    /// What the VM should be.
    pub spec: VmSpec,
    /// What it is.
    #[serde(default)]
    pub status: VmStatus,
}

/// What a VM should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Virtual CPUs, 1 to 255.
    #[schema(minimum = 1, maximum = 255)]
    pub cpus: u32,
    /// Guest memory: 16 MiB to 4 TiB, a whole number of MiB (`"256MiB"`, `"2G"` or bytes).
    pub memory: Bytes,
    /// Firmware; when absent, that of the image the VM boots from, else BIOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// The CPU the guest sees: `baseline` (default; migrates between any nodes),
    /// `host-passthrough` (fastest; KVM only, migrates only between identical CPUs), or a
    /// QEMU model name such as `Nehalem`.
    #[serde(default)]
    pub cpu_model: CpuModel,
    /// Disks, in the order the guest sees them.
    #[serde(default)]
    pub disks: Vec<VmDisk>,
    /// Network interfaces, in the order the guest sees them.
    #[serde(default)]
    pub nics: Vec<VmNic>,
    /// NoCloud seed for cloud-init; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInit>,
    /// Devices to boot from, by disk or NIC name, or `iso` for the attached ISO. When empty:
    /// the ISO (if attached), then the disks in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_order: Vec<Name>,
    /// An ISO image attached as a CD-ROM (an `Image` whose format is iso).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso: Option<Name>,
    /// When the VM's node itself restarts: `true` (default) starts the VM again if
    /// `power_state` is `running`; `false` leaves it off and sets `power_state` to `stopped`.
    /// A keeld restart never stops or starts a guest either way.
    #[serde(default = "default_true")]
    pub autostart: bool,
    /// Whether the VM should be running.
    #[serde(default)]
    pub power_state: PowerState,
    /// Where the VM may run.
    #[serde(default)]
    pub placement: VmPlacement,
    /// What happens when the VM's node fails.
    #[serde(default)]
    pub ha: HaSpec,
    /// A template: never runs (`power_state` must be `stopped`); VMs are made from it by
    /// cloning (`POST /api/v1/vms/{name}/clone`; `keel vm create NAME --from-template T`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub template: bool,
    /// One-shot power actions asked through the API (reboot, force off); keeld bumps
    /// these, clients never set them.
    #[serde(default, skip_serializing_if = "VmActions::is_none")]
    pub actions: VmActions,
}

/// One-shot power actions (`POST /api/v1/vms/{name}/reboot` and `.../force-stop`) as
/// counters: the API bumps one in `spec.actions`, the VM's node carries the action out once
/// and copies the counter into `status.actions`. Counters rather than flags, so that a
/// request is neither lost nor repeated when a node restarts halfway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmActions {
    /// Reboots asked for.
    #[serde(default)]
    pub reboot: u64,
    /// Forced power-offs asked for.
    #[serde(default)]
    pub force_stop: u64,
}

impl VmActions {
    /// No action was ever asked for.
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }
}

/// A live migration in progress, recorded on the VM while it runs (`status.migration`):
/// its node's reconciler leaves the VM to the migration, and the destination does not
/// touch it until the VM is bound there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmMigration {
    /// The `Task` that drives it.
    pub task: String,
    /// The node the VM is moving to.
    pub destination: String,
    /// True when the VM was stopped: it moves started paused (its vCPUs never run) and is
    /// shut off again on the destination.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offline: bool,
    /// The destination's pool directory, written by the destination once the VM's disks
    /// are ready there (the source maps its own pool's paths to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_pool: Option<String>,
}

fn default_true() -> bool {
    true
}

/// The CPU a guest sees. Written as one string: `baseline`, `host-passthrough`, or a QEMU
/// CPU model name (1 to 64 of `A-Z a-z 0-9 - _ .`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum CpuModel {
    /// A model every node of the cluster supports, so the VM can live-migrate anywhere.
    #[default]
    Baseline,
    /// The host's CPU as it is; KVM only; migration only between identical CPUs.
    HostPassthrough,
    /// A named QEMU model, e.g. `Nehalem` or `Skylake-Client-IBRS`.
    Named(String),
}

impl FromStr for CpuModel {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "baseline" => Ok(Self::Baseline),
            "host-passthrough" => Ok(Self::HostPassthrough),
            _ => {
                let ok = !s.is_empty()
                    && s.len() <= 64
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if ok {
                    Ok(Self::Named(s.to_string()))
                } else {
                    Err(ValidationError::new(
                        "",
                        format!("{s:?} is not a CPU model: use baseline, host-passthrough, or a QEMU model name (1-64 of A-Z a-z 0-9 - _ .) such as Nehalem"),
                    ))
                }
            }
        }
    }
}

impl utoipa::PartialSchema for CpuModel {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[A-Za-z0-9._-]{1,64}$"))
            .description(Some(
                "baseline (migrates anywhere), host-passthrough (KVM only), or a QEMU CPU model name",
            ))
            .examples([
                serde_json::json!("baseline"),
                serde_json::json!("host-passthrough"),
                serde_json::json!("Nehalem"),
            ])
            .into()
    }
}

impl ToSchema for CpuModel {}

impl fmt::Display for CpuModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuModel::Baseline => f.write_str("baseline"),
            CpuModel::HostPassthrough => f.write_str("host-passthrough"),
            CpuModel::Named(name) => f.write_str(name),
        }
    }
}

impl Serialize for CpuModel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CpuModel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse()
            .map_err(|e: ValidationError| de::Error::custom(e.message))
    }
}

/// A VM's disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmDisk {
    /// Name, unique among the VM's disks and NICs (`boot_order` refers to it).
    pub name: Name,
    /// Where the disk comes from.
    pub source: DiskSource,
    /// Bus; when absent, the image's `disk_bus` for disks from an image, else virtio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    /// I/O limits for the volume created for this disk (image and empty sources only; set
    /// them on the volume for a `volume` source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
}

/// Where a VM's disk comes from. For `image` and `empty`, keeld creates a volume that
/// belongs to the VM (named by [`owned_volume_name`]) and deletes it with the VM when asked;
/// a `volume` disk is only attached and outlives the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DiskSource {
    /// A thin copy of an image.
    Image {
        /// The image.
        image: Name,
        /// Size the guest sees; the image's virtual size when absent (never smaller).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<Bytes>,
    },
    /// A new blank disk.
    Empty {
        /// Size the guest sees.
        size: Bytes,
    },
    /// An existing volume (it must be on the node the VM runs on).
    Volume {
        /// The volume.
        volume: Name,
    },
}

/// A VM's network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmNic {
    /// Name, unique among the VM's disks and NICs.
    pub name: Name,
    /// For now the Open vSwitch bridge on each node the NIC plugs into (1-15 of
    /// `A-Z a-z 0-9 - _ .`); the network issue turns this into a network's name.
    pub network: String,
    /// Ethernet address; when absent, one derived from the VM's uid and the NIC's name
    /// ([`derived_mac`]), so it stays the same for the VM's life without being stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Emulated model.
    #[serde(default)]
    pub model: NicModel,
}

/// A NoCloud seed for cloud-init.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInit {
    /// Hostname; the VM's name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// SSH public keys for the default user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    /// Password for the default user (plain or a crypt(3) hash). keeld stores only a
    /// SHA-512 crypt hash (`$6$...`) of a plain password, so reads never show it in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A complete user-data document, used as is; instead of `ssh_keys` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
}

impl fmt::Debug for CloudInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudInit")
            .field("hostname", &self.hostname)
            .field("ssh_keys", &self.ssh_keys)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("user_data", &self.user_data.as_ref().map(|u| u.len()))
            .finish()
    }
}

/// Whether a VM should be running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    /// Running (the default: a created VM starts).
    #[default]
    Running,
    /// Shut down (gracefully, then forced after a timeout).
    Stopped,
    /// Running but paused (status phase stays `running` with the `Paused` condition).
    Paused,
}

/// Where a VM may run. The scheduler combines this with capacity and the group's rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmPlacement {
    /// Pin: the VM runs on this node or nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Name>,
    /// Only nodes whose labels include all of these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// The `VmGroup` whose rule applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Name>,
}

/// What happens when a VM's node fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HaSpec {
    /// The policy.
    #[serde(default)]
    pub policy: HaPolicy,
}

/// HA policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HaPolicy {
    /// Nothing: the VM is marked `lost` until its node returns.
    #[default]
    None,
    /// Restart the VM on another node once its node is fenced.
    Restart,
}

/// What a VM is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmStatus {
    /// Where the VM is in its life.
    #[serde(default)]
    pub phase: VmPhase,
    /// The node the VM is bound to (chosen by the scheduler; the node that runs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Guest addresses, from the guest agent or the DHCP lease.
    #[serde(default)]
    pub ips: Vec<String>,
    /// Observed facts with reasons (`Scheduled`, `Paused`, ...).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Resource use, as last sampled.
    #[serde(default)]
    pub usage: VmUsage,
    /// The `metadata.version` this status reflects; lags while a change is being applied.
    #[serde(default)]
    pub observed_version: u64,
    /// The one-shot actions of `spec.actions` the node has carried out.
    #[serde(default, skip_serializing_if = "VmActions::is_none")]
    pub actions: VmActions,
    /// The live migration under way, while phase is `migrating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<VmMigration>,
    /// How far the running VM can grow without a restart (its domain's limits, fixed when it
    /// started); absent while it does not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug: Option<VmHotplug>,
    /// The name the VM had before a rename, until its node has removed the domain of that
    /// name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<String>,
}

/// The limits a running VM can grow to by hot-add (`PATCH /api/v1/vms/{name}` with more
/// `cpus` or `memory`); going beyond them needs a stop and start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmHotplug {
    /// Most vCPUs.
    pub max_cpus: u32,
    /// Most memory.
    pub max_memory: Bytes,
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmPhase {
    /// Created; not yet looked at.
    #[default]
    Pending,
    /// Waiting for a node (see the `Scheduled` condition for why it has none).
    Scheduling,
    /// Bound to a node that is preparing storage and starting the domain.
    Starting,
    /// The domain runs.
    Running,
    /// Shutting down.
    Stopping,
    /// Defined but not running.
    Stopped,
    /// Live-migrating to another node (a task follows it).
    Migrating,
    /// The node could not run it; the conditions say why.
    Failed,
    /// Its domain vanished, or its node stopped reporting.
    Lost,
}

impl VmPhase {
    /// Whether the guest may be running somewhere (it holds CPU and memory on its node).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            VmPhase::Starting | VmPhase::Running | VmPhase::Stopping | VmPhase::Migrating
        )
    }
}

/// A VM's resource use. Counters are cumulative since the domain started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmUsage {
    /// CPU use over the last sample, percent of all its vCPUs (0 to 100).
    #[serde(default)]
    pub cpu_percent: f64,
    /// Memory the guest uses (from the balloon driver; the whole allocation without it).
    #[serde(default)]
    pub memory_bytes: u64,
    /// Bytes read from its disks.
    #[serde(default)]
    pub disk_read_bytes: u64,
    /// Bytes written to its disks.
    #[serde(default)]
    pub disk_write_bytes: u64,
    /// Bytes received on its NICs.
    #[serde(default)]
    pub net_rx_bytes: u64,
    /// Bytes sent on its NICs.
    #[serde(default)]
    pub net_tx_bytes: u64,
}

/// A device a VM boots from, resolved from `boot_order` ([`VmSpec::boot_devices`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDevice<'a> {
    /// The attached ISO.
    Iso,
    /// The disk at this index of `disks`.
    Disk(usize, &'a VmDisk),
    /// The NIC at this index of `nics` (network boot).
    Nic(usize, &'a VmNic),
}

impl VmSpec {
    /// Fewest vCPUs.
    pub const MIN_CPUS: u32 = 1;
    /// Most vCPUs (the `pc` machine type's limit).
    pub const MAX_CPUS: u32 = 255;
    /// Least memory.
    pub const MIN_MEMORY: Bytes = Bytes::from_mib(16);
    /// Most memory (4 TiB).
    pub const MAX_MEMORY: Bytes = Bytes::new(4 * Bytes::TIB);
    /// Most disks.
    pub const MAX_DISKS: usize = 16;
    /// Most NICs.
    pub const MAX_NICS: usize = 8;
    /// The `boot_order` entry for the attached ISO (so no disk or NIC may be named this).
    pub const ISO_BOOT_NAME: &'static str = "iso";

    /// A spec with these CPUs and memory and defaults for the rest.
    pub fn new(cpus: u32, memory: Bytes) -> Self {
        Self {
            cpus,
            memory,
            firmware: None,
            cpu_model: CpuModel::default(),
            disks: Vec::new(),
            nics: Vec::new(),
            cloud_init: None,
            boot_order: Vec::new(),
            iso: None,
            autostart: true,
            power_state: PowerState::default(),
            placement: VmPlacement::default(),
            ha: HaSpec::default(),
            template: false,
            actions: VmActions::default(),
        }
    }

    /// Checks everything a single field cannot: ranges, references between fields, and
    /// uniqueness. Paths are relative to the spec (`cpus`, `disks[1].source.size`);
    /// [`VmCreate::validate`] prefixes `spec.`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(Self::MIN_CPUS..=Self::MAX_CPUS).contains(&self.cpus) {
            return Err(ValidationError::new(
                "cpus",
                format!(
                    "{} CPUs is out of range; use {} to {}",
                    self.cpus,
                    Self::MIN_CPUS,
                    Self::MAX_CPUS
                ),
            ));
        }
        if self.memory < Self::MIN_MEMORY || self.memory > Self::MAX_MEMORY {
            return Err(ValidationError::new(
                "memory",
                format!(
                    "{} of memory is out of range; use {} to {} (e.g. \"256MiB\", \"2GiB\")",
                    self.memory,
                    Self::MIN_MEMORY,
                    Self::MAX_MEMORY
                ),
            ));
        }
        if !self.memory.is_multiple_of(Bytes::MIB) {
            return Err(ValidationError::new(
                "memory",
                format!(
                    "{} bytes is not a whole number of MiB; round it (e.g. \"{} MiB\")",
                    self.memory.get(),
                    self.memory.mib()
                ),
            ));
        }
        if self.template && self.power_state != PowerState::Stopped {
            return Err(ValidationError::new(
                "power_state",
                "a template never runs: set power_state to stopped (or template to false)",
            ));
        }
        self.validate_disks()?;
        self.validate_nics()?;
        self.validate_boot_order()?;
        if let Some(ci) = &self.cloud_init {
            ci.validate().map_err(|e| e.within("cloud_init"))?;
        }
        validate_labels("placement.node_selector", &self.placement.node_selector)?;
        Ok(())
    }

    fn validate_disks(&self) -> Result<(), ValidationError> {
        if self.disks.len() > Self::MAX_DISKS {
            return Err(ValidationError::new(
                "disks",
                format!(
                    "{} disks is too many; a VM has at most {}",
                    self.disks.len(),
                    Self::MAX_DISKS
                ),
            ));
        }
        let mut volumes = BTreeSet::new();
        for (i, disk) in self.disks.iter().enumerate() {
            let path = format!("disks[{i}]");
            match &disk.source {
                DiskSource::Image {
                    size: Some(size), ..
                }
                | DiskSource::Empty { size } => {
                    check_disk_size(&format!("{path}.source.size"), *size)?;
                }
                DiskSource::Image { size: None, .. } => {}
                DiskSource::Volume { volume } => {
                    if disk.qos.is_some() {
                        return Err(ValidationError::new(
                            format!("{path}.qos"),
                            format!("disk {} attaches the existing volume {volume}; set its limits on the volume (PATCH the volume's qos)", disk.name),
                        ));
                    }
                    if !volumes.insert(volume) {
                        return Err(ValidationError::new(
                            format!("{path}.source.volume"),
                            format!("volume {volume} is attached twice"),
                        ));
                    }
                }
            }
            if let Some(qos) = &disk.qos {
                qos.validate()
                    .map_err(|e| e.within(&format!("{path}.qos")))?;
            }
        }
        self.check_device_names()
    }

    /// Disk and NIC names share one namespace (boot_order refers to both), and `iso` is
    /// reserved for the ISO.
    fn check_device_names(&self) -> Result<(), ValidationError> {
        let mut seen: BTreeMap<&str, String> = BTreeMap::new();
        let names = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("disks[{i}].name"), &d.name))
            .chain(
                self.nics
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (format!("nics[{i}].name"), &n.name)),
            );
        for (path, name) in names {
            if name.as_str() == Self::ISO_BOOT_NAME {
                return Err(ValidationError::new(
                    path,
                    "the name iso is reserved for the attached ISO in boot_order; pick another name",
                ));
            }
            if let Some(first) = seen.insert(name.as_str(), path.clone()) {
                return Err(ValidationError::new(
                    path,
                    format!("the name {name} is already used by {first}; disk and NIC names must be unique"),
                ));
            }
        }
        Ok(())
    }

    fn validate_nics(&self) -> Result<(), ValidationError> {
        if self.nics.len() > Self::MAX_NICS {
            return Err(ValidationError::new(
                "nics",
                format!(
                    "{} NICs is too many; a VM has at most {}",
                    self.nics.len(),
                    Self::MAX_NICS
                ),
            ));
        }
        let mut macs = BTreeMap::new();
        for (i, nic) in self.nics.iter().enumerate() {
            let path = format!("nics[{i}]");
            let n = &nic.network;
            let ok = !n.is_empty()
                && n.len() <= 15
                && n != "."
                && n != ".."
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(ValidationError::new(
                    format!("{path}.network"),
                    format!("{n:?} is not a network: for now give the node bridge's name, 1-15 of A-Z a-z 0-9 - _ ."),
                ));
            }
            if let Some(mac) = nic.mac {
                if let Some(first) = macs.insert(mac, i) {
                    return Err(ValidationError::new(
                        format!("{path}.mac"),
                        format!("{mac} is already the address of nics[{first}]"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_boot_order(&self) -> Result<(), ValidationError> {
        let mut seen = BTreeSet::new();
        for (i, entry) in self.boot_order.iter().enumerate() {
            let path = format!("boot_order[{i}]");
            if !seen.insert(entry) {
                return Err(ValidationError::new(
                    path,
                    format!("{entry} is listed twice"),
                ));
            }
            let known = if entry.as_str() == Self::ISO_BOOT_NAME {
                if self.iso.is_none() {
                    return Err(ValidationError::new(
                        path,
                        "boot_order names iso but no ISO is attached; set iso or remove the entry",
                    ));
                }
                true
            } else {
                self.disks.iter().any(|d| d.name == *entry)
                    || self.nics.iter().any(|n| n.name == *entry)
            };
            if !known {
                return Err(ValidationError::new(
                    path,
                    format!("{entry} is not a disk or NIC of this VM (nor iso)"),
                ));
            }
        }
        Ok(())
    }

    /// The devices to boot from, in order: `boot_order` resolved, or when it is empty the
    /// ISO (if attached) and then every disk. Entries that name nothing (only possible in
    /// a spec that fails [`VmSpec::validate`]) are skipped.
    pub fn boot_devices(&self) -> Vec<BootDevice<'_>> {
        if self.boot_order.is_empty() {
            let iso = self.iso.as_ref().map(|_| BootDevice::Iso);
            let disks = self
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| BootDevice::Disk(i, d));
            return iso.into_iter().chain(disks).collect();
        }
        self.boot_order
            .iter()
            .filter_map(|entry| {
                if entry.as_str() == Self::ISO_BOOT_NAME {
                    return self.iso.as_ref().map(|_| BootDevice::Iso);
                }
                if let Some((i, d)) = self
                    .disks
                    .iter()
                    .enumerate()
                    .find(|(_, d)| d.name == *entry)
                {
                    return Some(BootDevice::Disk(i, d));
                }
                self.nics
                    .iter()
                    .enumerate()
                    .find(|(_, n)| n.name == *entry)
                    .map(|(i, n)| BootDevice::Nic(i, n))
            })
            .collect()
    }

    /// Bytes of new volumes the VM's disks need on its node: the sizes of `empty` disks and
    /// of `image` disks that give one. `image` disks without a size need the image's
    /// virtual size, which only keeld knows; existing volumes need nothing new.
    pub fn new_disk_bytes(&self) -> u64 {
        self.disks
            .iter()
            .map(|d| match &d.source {
                DiskSource::Image { size, .. } => size.map_or(0, Bytes::get),
                DiskSource::Empty { size } => size.get(),
                DiskSource::Volume { .. } => 0,
            })
            .fold(0u64, u64::saturating_add)
    }

    /// The names of the top-level spec fields that differ between `self` and `other`, in
    /// declaration order, so keeld can tell which changes a running VM can take.
    pub fn changed_fields(&self, other: &VmSpec) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |name: &'static str, differs: bool| {
            if differs {
                out.push(name);
            }
        };
        check("cpus", self.cpus != other.cpus);
        check("memory", self.memory != other.memory);
        check("firmware", self.firmware != other.firmware);
        check("cpu_model", self.cpu_model != other.cpu_model);
        check("disks", self.disks != other.disks);
        check("nics", self.nics != other.nics);
        check("cloud_init", self.cloud_init != other.cloud_init);
        check("boot_order", self.boot_order != other.boot_order);
        check("iso", self.iso != other.iso);
        check("autostart", self.autostart != other.autostart);
        check("power_state", self.power_state != other.power_state);
        check("placement", self.placement != other.placement);
        check("ha", self.ha != other.ha);
        check("template", self.template != other.template);
        check("actions", self.actions != other.actions);
        out
    }
}

impl CloudInit {
    /// Most SSH keys.
    pub const MAX_SSH_KEYS: usize = 64;
    /// Largest user-data document (the NoCloud seed is a small ISO).
    pub const MAX_USER_DATA: usize = 64 * 1024;

    /// Checks the seed; paths are relative (`ssh_keys[0]`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(host) = &self.hostname {
            check_hostname(host)?;
        }
        if self.ssh_keys.len() > Self::MAX_SSH_KEYS {
            return Err(ValidationError::new(
                "ssh_keys",
                format!(
                    "{} keys is too many; give at most {}",
                    self.ssh_keys.len(),
                    Self::MAX_SSH_KEYS
                ),
            ));
        }
        for (i, key) in self.ssh_keys.iter().enumerate() {
            let known = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"]
                .iter()
                .any(|p| key.starts_with(p));
            if !known || key.len() > 16 * 1024 || key.contains(['\n', '\r']) {
                return Err(ValidationError::new(
                    format!("ssh_keys[{i}]"),
                    "not an SSH public key: give one line as in id_ed25519.pub (\"ssh-ed25519 AAAA... comment\")",
                ));
            }
        }
        if let Some(pw) = &self.password {
            if pw.is_empty() || pw.len() > 256 || pw.chars().any(char::is_control) {
                return Err(ValidationError::new(
                    "password",
                    "the password must be 1 to 256 characters without control characters",
                ));
            }
        }
        if let Some(ud) = &self.user_data {
            if ud.len() > Self::MAX_USER_DATA {
                return Err(ValidationError::new(
                    "user_data",
                    format!(
                        "user-data is {} bytes; at most {} are accepted",
                        ud.len(),
                        Self::MAX_USER_DATA
                    ),
                ));
            }
            if !(ud.starts_with("#cloud-config") || ud.starts_with("#!")) {
                return Err(ValidationError::new(
                    "user_data",
                    "user-data must start with #cloud-config (a cloud-config document) or #! (a script)",
                ));
            }
            if !self.ssh_keys.is_empty() || self.password.is_some() {
                return Err(ValidationError::new(
                    "user_data",
                    "give either user_data or ssh_keys/password, not both; put the keys and password into your user_data",
                ));
            }
        }
        Ok(())
    }
}

/// A hostname: up to 253 characters of dot-separated labels, each 1-63 letters, digits and
/// `-`, not starting or ending with `-`.
fn check_hostname(host: &str) -> Result<(), ValidationError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(ValidationError::new(
            "hostname",
            format!("{host:?} is not a hostname: use dot-separated labels of 1-63 letters, digits and '-' (up to 253 characters)"),
        ));
    }
    Ok(())
}

/// The name of the volume keeld creates for disk `disk` of VM `vm` (image and empty
/// sources): `<vm>-<disk>`, or when that is longer than 63 characters, a shortened form
/// ending in a hash of both, so it is always a valid [`Name`] and always the same.
pub fn owned_volume_name(vm: &Name, disk: &Name) -> Name {
    let full = format!("{vm}-{disk}");
    if full.len() <= Name::MAX_LEN {
        if let Ok(name) = Name::new(full.clone()) {
            return name;
        }
    }
    // 63 = prefix + '-' + 8 hex digits. The prefix starts with the VM's first letter.
    let hash = fnv1a(full.as_bytes());
    let mut prefix: String = full.chars().take(Name::MAX_LEN - 9).collect();
    while prefix.ends_with('-') {
        prefix.pop();
    }
    let short = format!("{prefix}-{:08x}", hash as u32);
    Name::new(short).unwrap_or_else(|_| vm.clone())
}

/// The MAC address a NIC without one gets: `52:54:00` (QEMU's prefix) and three bytes of a
/// hash of the VM's uid and the NIC's name. Stable for the VM's life, different for a
/// re-created VM (new uid).
pub fn derived_mac(vm_uid: &str, nic: &Name) -> MacAddr {
    let h = fnv1a(format!("{vm_uid}/{nic}").as_bytes()).to_be_bytes();
    MacAddr::qemu([h[5], h[6], h[7]])
}

/// FNV-1a, 64 bit: a stable hash (std's `DefaultHasher` may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `POST /api/v1/vms`: a new VM. The body is `metadata` (name, labels) and `spec`; the
/// server owns `uid`, `version`, `created` and the status, so they cannot be sent. Read
/// back, the VM is `{metadata, spec, status}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmCreate {
    /// Name and labels.
    pub metadata: NewMetadata,
    /// The VM.
    pub spec: VmSpec,
}

impl VmCreate {
    /// All checks the model can make; paths are absolute in the body (`spec.cpus`). keeld
    /// still checks references to other resources (images, volumes, groups, pools, nodes).
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.metadata.validate().map_err(|e| e.within("metadata"))?;
        self.spec.validate().map_err(|e| e.within("spec"))
    }
}
