//! [`Hypervisor`]: the seam between Keel and whatever runs its VMs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use uuid::Uuid;

use crate::{
    Capabilities, Console, Disk, DomainSpec, HypervisorError, KvmStatus, LiveDomain, MacAddr, Nic,
};

/// Drives the domains of one host.
///
/// # Why synchronous
///
/// Every libvirt call blocks in C, so an async trait would only wrap each call in
/// `spawn_blocking`; doing that once, at the call site in keeld, keeps this trait object-safe
/// (`Arc<dyn Hypervisor>`), keeps the fake free of an executor, and lets the conformance suite
/// and tests run on plain threads. Implementations are `Send + Sync`: one handle serves every
/// task of a node.
///
/// # Contract
///
/// Domains are named by their libvirt name. Every implementation returns
/// [`HypervisorError::NotFound`] for an unknown name, [`HypervisorError::InvalidState`] when an
/// operation does not apply to the domain's state, and [`HypervisorError::AlreadyExists`] when
/// a definition clashes with another domain; [`crate::conformance`] checks this. Operations
/// that only *request* something of the guest ([`shutdown`](Self::shutdown),
/// [`reboot`](Self::reboot)) return once the request is delivered; watch the state to see it
/// happen.
pub trait Hypervisor: Send + Sync {
    /// Host architecture, available domain types, host CPU model, named CPU models.
    fn capabilities(&self) -> Result<Capabilities, HypervisorError>;

    /// Whether KVM actually runs guests on this host, probed once and remembered; fall back to
    /// TCG ([`DomainType::Qemu`](crate::DomainType::Qemu)) when it does not.
    fn kvm_status(&self) -> KvmStatus;

    /// Shorthand: [`kvm_status`](Self::kvm_status) is [`KvmStatus::Usable`].
    fn kvm_usable(&self) -> bool {
        self.kvm_status() == KvmStatus::Usable
    }

    /// Defines `spec` as a persistent domain, or updates the definition of the domain with the
    /// same name and UUID (a running domain picks the change up at its next start).
    fn define(&self, spec: &DomainSpec) -> Result<DomainInfo, HypervisorError>;

    /// Starts a defined, shut-off domain.
    fn start(&self, name: &str) -> Result<(), HypervisorError>;

    /// Starts a defined, shut-off domain with its vCPUs paused (they never ran): how a
    /// stopped VM is moved with a live migration.
    fn start_paused(&self, name: &str) -> Result<(), HypervisorError>;

    /// Asks the guest to power off.
    fn shutdown(&self, name: &str, mode: ShutdownMode) -> Result<(), HypervisorError>;

    /// Asks the guest to reboot (ACPI power button, then QEMU restarts the guest when it powers
    /// off); the domain stays running.
    fn reboot(&self, name: &str) -> Result<(), HypervisorError>;

    /// Powers the domain off at once, like pulling the plug.
    fn destroy(&self, name: &str) -> Result<(), HypervisorError>;

    /// Removes the definition of a shut-off domain (and its libvirt-side snapshot metadata and
    /// managed-save image). Refused while the domain runs, so that nothing is left behind as a
    /// transient domain: destroy it first.
    fn undefine(&self, name: &str) -> Result<(), HypervisorError>;

    /// Pauses the vCPUs. A paused domain stays paused; a shut-off one is refused.
    fn suspend(&self, name: &str) -> Result<(), HypervisorError>;

    /// Resumes paused vCPUs. A running domain stays running; a shut-off one is refused.
    fn resume(&self, name: &str) -> Result<(), HypervisorError>;

    /// One domain.
    fn domain(&self, name: &str) -> Result<DomainInfo, HypervisorError>;

    /// Every domain, Keel's or not, sorted by name.
    fn list(&self) -> Result<Vec<DomainInfo>, HypervisorError>;

    /// Live-migrates a running domain to another hypervisor. On success the domain runs and is
    /// defined there, and is gone from here; on failure it keeps running here.
    fn migrate(&self, name: &str, options: &MigrateOptions) -> Result<(), HypervisorError>;

    /// Attaches to the serial console of a running domain, taking it over from any other
    /// client.
    fn open_console(&self, name: &str) -> Result<Box<dyn Console>, HypervisorError>;

    /// Progress of the domain's current job (a live migration started by
    /// [`migrate`](Self::migrate) on another thread), or `None` when no job runs.
    fn job_progress(&self, name: &str) -> Result<Option<JobProgress>, HypervisorError>;

    /// Aborts the domain's current job: a live migration stops and the domain keeps running
    /// here. [`HypervisorError::InvalidState`] when no job runs.
    fn abort_job(&self, name: &str) -> Result<(), HypervisorError>;

    /// Grows the disk backed by the file `disk` of a running (or paused) domain to `bytes`,
    /// live; the guest sees the new size at once. A shut-off domain is refused: grow its
    /// file with `qemu-img resize` instead.
    fn block_resize(&self, name: &str, disk: &Path, bytes: u64) -> Result<(), HypervisorError>;

    /// The IP addresses of a running domain's NICs, loopback and link-local left out: from
    /// qemu-guest-agent when it answers (every address the guest has), else from the DHCP
    /// leases of libvirt networks, else from the host's ARP table; empty when none knows.
    /// Never waits long for an absent agent.
    fn interface_addresses(&self, name: &str) -> Result<Vec<crate::GuestAddress>, HypervisorError>;

    /// Whether qemu-guest-agent answers in a running domain (false without an agent channel,
    /// or while no agent listens on it).
    fn agent_ping(&self, name: &str) -> Result<bool, HypervisorError>;

    /// Freezes the guest's file systems through qemu-guest-agent (flushed and blocked for
    /// writes until [`fs_thaw`](Self::fs_thaw)); returns how many it froze.
    /// [`HypervisorError::NoGuestAgent`] when no agent answers.
    fn fs_freeze(&self, name: &str) -> Result<u32, HypervisorError>;

    /// Thaws what [`fs_freeze`](Self::fs_freeze) froze; returns how many it thawed.
    fn fs_thaw(&self, name: &str) -> Result<u32, HypervisorError>;

    /// Takes an internal snapshot named `snapshot` of a running (or paused) domain: the
    /// state of every disk and the guest's memory, stored inside the disks' qcow2 files.
    /// libvirt keeps no metadata about it, so the qcow2 files are the only record (list,
    /// revert and delete it with `qemu-img snapshot` while the domain is shut off).
    fn snapshot_live(&self, name: &str, snapshot: &str) -> Result<(), HypervisorError>;

    /// The resource counters of an active domain (running or paused).
    fn stats(&self, name: &str) -> Result<DomainStats, HypervisorError>;

    // Hot-plugging. Each changes only the running domain (libvirt's `AFFECT_LIVE`): the
    // caller redefines the domain with the same change ([`define`](Self::define)) so the next
    // start keeps it. A shut-off domain is refused with `InvalidState` (redefine it instead);
    // a request the domain cannot take is `Refused`.

    /// The domain's vCPUs, memory, disks and NICs as they are now.
    fn live(&self, name: &str) -> Result<LiveDomain, HypervisorError>;

    /// Plugs vCPUs into a running domain (or unplugs them), up to its `max_vcpus`.
    fn set_vcpus(&self, name: &str, vcpus: u32) -> Result<(), HypervisorError>;

    /// Grows the memory of a running domain to `memory_mib` by plugging one DIMM of the
    /// difference, up to its `max_memory_mib`; shrinking is refused.
    fn grow_memory(&self, name: &str, memory_mib: u64) -> Result<(), HypervisorError>;

    /// Plugs `disk` into a running domain at the first free target; returns the target.
    fn attach_disk(&self, name: &str, disk: &Disk) -> Result<String, HypervisorError>;

    /// Unplugs the disk backed by the file `path` from a running domain (the guest is asked
    /// to release it; the disk may stay listed for a moment until it has).
    fn detach_disk(&self, name: &str, path: &Path) -> Result<(), HypervisorError>;

    /// Plugs `nic` into a running domain (a new tap on its OVS bridge).
    fn attach_nic(&self, name: &str, nic: &Nic) -> Result<(), HypervisorError>;

    /// Unplugs the NIC with address `mac` from a running domain (its tap and OVS port go).
    fn detach_nic(&self, name: &str, mac: MacAddr) -> Result<(), HypervisorError>;
}

/// A running domain's resource counters (cumulative since its QEMU process started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DomainStats {
    /// vCPUs.
    pub vcpus: u32,
    /// CPU time used by all vCPUs, nanoseconds.
    pub cpu_time_ns: u64,
    /// Memory the guest has (the balloon's current size; the allocation without a balloon).
    pub memory_bytes: u64,
    /// Bytes read from all disks.
    pub disk_read_bytes: u64,
    /// Bytes written to all disks.
    pub disk_write_bytes: u64,
    /// Bytes the guest received on all NICs.
    pub net_rx_bytes: u64,
    /// Bytes the guest sent on all NICs.
    pub net_tx_bytes: u64,
}

/// What Keel knows about one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// libvirt name.
    pub name: String,
    /// libvirt UUID.
    pub uuid: Uuid,
    /// Current state.
    pub state: DomainState,
    /// True when defined (survives a stop); false for a transient domain.
    pub persistent: bool,
    /// The Keel VM uid from the domain's metadata; `None` for domains Keel did not define.
    pub keel_uid: Option<Uuid>,
}

/// A domain's state, as libvirt reports it, folded into what Keel acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DomainState {
    /// vCPUs running (libvirt `running` or `blocked`).
    Running,
    /// vCPUs paused by a user, a migration or an I/O error.
    Paused,
    /// Shutdown requested and in progress.
    ShuttingDown,
    /// Not running.
    Shutoff,
    /// The guest crashed (and `on_crash` kept it).
    Crashed,
    /// Suspended by the guest's power management.
    PmSuspended,
    /// libvirt reports no state.
    Unknown,
}

impl DomainState {
    /// True while a QEMU process exists for the domain.
    pub fn is_active(self) -> bool {
        !matches!(self, DomainState::Shutoff)
    }
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainState::Running => "running",
            DomainState::Paused => "paused",
            DomainState::ShuttingDown => "shutting down",
            DomainState::Shutoff => "shut off",
            DomainState::Crashed => "crashed",
            DomainState::PmSuspended => "suspended by the guest",
            DomainState::Unknown => "in an unknown state",
        })
    }
}

/// How to ask a guest to power off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Press the ACPI power button.
    Acpi,
    /// Ask qemu-guest-agent (needs [`DomainSpec::guest_agent`] and the agent in the guest).
    GuestAgent,
}

/// How far a domain's job (a live migration) has come, from libvirt's job statistics. Totals
/// grow while a live migration re-sends memory the guest dirtied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobProgress {
    /// Bytes to move in all (memory and disks).
    pub data_total: u64,
    /// Bytes moved so far.
    pub data_processed: u64,
    /// Bytes still to move.
    pub data_remaining: u64,
    /// Of those, disk bytes to copy (copy storage), and copied so far.
    pub disk_total: u64,
    /// Disk bytes copied so far.
    pub disk_processed: u64,
    /// How long the job has run.
    pub elapsed: Duration,
}

/// Where and how to live-migrate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateOptions {
    /// libvirt URI of the destination, as this host's libvirt daemon reaches it (peer to peer),
    /// e.g. `qemu+tls://node2/system`.
    pub dest_uri: String,
    /// Where QEMU sends the memory stream, e.g. `tcp://10.0.0.2`; by default the destination's
    /// host name.
    pub migrate_uri: Option<String>,
    /// Copy local disks to the destination too (non-shared storage); the destination must have
    /// image files (or a pool to create them in) at the same paths.
    pub copy_storage: bool,
    /// Longest pause allowed for the final switch-over.
    pub max_downtime: Option<Duration>,
    /// Directories whose files the destination keeps elsewhere (`(here, there)`): every file
    /// of the domain under `here` (disks, their backing images) is at the same relative path
    /// under `there` on the destination, e.g. when each host has its own pool directory.
    pub path_map: Vec<(PathBuf, PathBuf)>,
    /// Cap on the migration's bandwidth in MiB/s (memory and copied disks); none: as fast
    /// as the network allows.
    pub bandwidth_mib: Option<u64>,
    /// Leave the domain paused on the destination (a stopped VM moved offline: its vCPUs
    /// never run).
    pub paused: bool,
}

impl MigrateOptions {
    /// Memory-only live migration to `dest_uri` with libvirt's defaults.
    pub fn to(dest_uri: impl Into<String>) -> Self {
        Self {
            dest_uri: dest_uri.into(),
            migrate_uri: None,
            copy_storage: false,
            max_downtime: None,
            path_map: Vec::new(),
            bandwidth_mib: None,
            paused: false,
        }
    }
}
