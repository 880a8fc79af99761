//! [`Libvirt`]: the [`Hypervisor`] over a real libvirt connection.

mod console;

use std::path::Path;
use std::sync::OnceLock;

use virt::connect::Connect;
use virt::domain::{Domain, MigrateParameters};
use virt::domain_snapshot::DomainSnapshot;
use virt::error::ErrorNumber;
use virt::stream::Stream;
use virt::sys;

use crate::xml::{parse_keel_metadata, KEEL_METADATA_NS};
use crate::{
    Capabilities, Console, Disk, DomainInfo, DomainSpec, DomainState, DomainType, Hypervisor,
    HypervisorError, JobProgress, KvmProbe, KvmStatus, LiveDomain, MacAddr, MigrateOptions, Nic,
    Op, ShutdownMode,
};

use console::LibvirtConsole;

/// A libvirt connection, usually `qemu:///system` on the local host.
///
/// libvirt connections are thread-safe, so one `Libvirt` serves every thread; dropping it
/// closes the connection.
pub struct Libvirt {
    conn: Connect,
    uri: String,
    probe: KvmProbe,
    kvm: OnceLock<KvmStatus>,
}

impl Libvirt {
    /// The local system libvirt daemon.
    pub const DEFAULT_URI: &'static str = "qemu:///system";

    /// Opens a connection to `uri`.
    pub fn connect(uri: &str) -> Result<Self, HypervisorError> {
        // libvirt prints every error to stderr by default; we return them instead.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|source| HypervisorError::Connect {
            uri: uri.into(),
            source,
        })?;
        Ok(Self {
            conn,
            uri: uri.into(),
            probe: KvmProbe::default(),
            kvm: OnceLock::new(),
        })
    }

    /// Uses `probe` for [`Hypervisor::kvm_status`] instead of the default one. The probe runs
    /// QEMU on *this* host, so it only means something when libvirt is local too.
    pub fn with_kvm_probe(mut self, probe: KvmProbe) -> Self {
        self.probe = probe;
        self
    }

    /// The URI this connection was opened with.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn lookup(&self, name: &str, op: Op) -> Result<Domain, HypervisorError> {
        Domain::lookup_by_name(&self.conn, name).map_err(|e| self.classify(op, name, e))
    }

    /// Maps a libvirt error about domain `name` to the contract's variants where one applies.
    fn classify(&self, op: Op, name: &str, source: virt::error::Error) -> HypervisorError {
        match source.code() {
            ErrorNumber::NoDomain => HypervisorError::NotFound { name: name.into() },
            ErrorNumber::OperationInvalid => HypervisorError::InvalidState {
                name: name.into(),
                op,
                state: Domain::lookup_by_name(&self.conn, name)
                    .and_then(|d| state_of(&d))
                    .unwrap_or(DomainState::Unknown),
            },
            _ => HypervisorError::Domain {
                op,
                name: name.into(),
                source,
            },
        }
    }

    fn info(&self, dom: &Domain, name: &str, op: Op) -> Result<DomainInfo, HypervisorError> {
        let fail = |e| self.classify(op, name, e);
        let keel_uid = match dom.get_metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(KEEL_METADATA_NS),
            0,
        ) {
            Ok(xml) => match parse_keel_metadata(&xml) {
                Ok(uid) => Some(uid),
                Err(e) => {
                    tracing::warn!(domain = name, error = %e, "unreadable Keel metadata");
                    None
                }
            },
            Err(e) if e.code() == ErrorNumber::NoDomainMetadata => None,
            Err(e) => return Err(fail(e)),
        };
        Ok(DomainInfo {
            name: dom.get_name().map_err(fail)?,
            uuid: dom.get_uuid().map_err(fail)?,
            state: state_of(dom).map_err(fail)?,
            persistent: dom.is_persistent().map_err(fail)?,
            keel_uid,
        })
    }

    /// Looks the domain up and refuses `op` unless its state is one of `allowed`.
    fn require(
        &self,
        name: &str,
        op: Op,
        allowed: &[DomainState],
    ) -> Result<(Domain, DomainState), HypervisorError> {
        let dom = self.lookup(name, op)?;
        let state = state_of(&dom).map_err(|e| self.classify(op, name, e))?;
        if !allowed.contains(&state) {
            return Err(HypervisorError::InvalidState {
                name: name.into(),
                op,
                state,
            });
        }
        Ok((dom, state))
    }
}

/// States in which devices and vCPUs can be hot-plugged.
const HOTPLUG: &[DomainState] = &[DomainState::Running, DomainState::Paused];

impl Libvirt {
    fn live_of(&self, dom: &Domain, name: &str, op: Op) -> Result<LiveDomain, HypervisorError> {
        let xml = dom
            .get_xml_desc(0)
            .map_err(|e| self.classify(op, name, e))?;
        LiveDomain::from_xml(&xml).map_err(|e| HypervisorError::Refused {
            name: name.into(),
            op,
            reason: format!("unreadable domain XML: {e}"),
        })
    }
}

/// States in which a QEMU process runs the guest (or is about to stop it).
const ACTIVE: &[DomainState] = &[
    DomainState::Running,
    DomainState::Paused,
    DomainState::ShuttingDown,
    DomainState::Crashed,
    DomainState::PmSuspended,
    DomainState::Unknown,
];

fn state_of(dom: &Domain) -> Result<DomainState, virt::error::Error> {
    let (state, _reason) = dom.get_state()?;
    Ok(match state {
        sys::VIR_DOMAIN_RUNNING | sys::VIR_DOMAIN_BLOCKED => DomainState::Running,
        sys::VIR_DOMAIN_PAUSED => DomainState::Paused,
        sys::VIR_DOMAIN_SHUTDOWN => DomainState::ShuttingDown,
        sys::VIR_DOMAIN_SHUTOFF => DomainState::Shutoff,
        sys::VIR_DOMAIN_CRASHED => DomainState::Crashed,
        sys::VIR_DOMAIN_PMSUSPENDED => DomainState::PmSuspended,
        _ => DomainState::Unknown,
    })
}

/// How long libvirt waits for qemu-guest-agent before giving up on a command.
const AGENT_TIMEOUT_SECS: i32 = 5;

/// Errors that mean "no agent answers" (no channel, nobody listening, no answer in time).
fn agent_absent(code: ErrorNumber) -> bool {
    matches!(
        code,
        ErrorNumber::ArgumentUnsupported
            | ErrorNumber::AgentUnresponsive
            | ErrorNumber::AgentUnsynced
            | ErrorNumber::AgentCommandTimeout
    )
}

/// Caps libvirt's wait for the agent of `dom` (its default can block for long); best effort.
fn set_agent_timeout(dom: &Domain) {
    // SAFETY: `dom` is a valid domain handle for the whole call; the call only sets a value
    // in libvirt's state for the domain and reports failure through its return value.
    let ret = unsafe { sys::virDomainAgentSetResponseTimeout(dom.as_ptr(), AGENT_TIMEOUT_SECS, 0) };
    if ret == -1 {
        let e = virt::error::Error::last_error();
        tracing::trace!(error = %e, "cannot set the guest agent timeout");
    }
}

extern "C" {
    /// libvirt allocates the array virDomainInterfaceAddresses returns with malloc.
    fn free(ptr: *mut std::ffi::c_void);
}

/// A C string from libvirt, or "" for a null pointer.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that stays valid during the call.
unsafe fn lossy(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// virDomainInterfaceAddresses from one source, copied out and freed. (The `virt` crate's
/// wrapper leaks libvirt's structures and crashes on a null MAC.)
fn guest_addresses(
    dom: &Domain,
    source: crate::AddressSource,
) -> Result<Vec<crate::GuestAddress>, virt::error::Error> {
    let src = match source {
        crate::AddressSource::Agent => sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
        crate::AddressSource::Lease => sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
        crate::AddressSource::Arp => sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
    };
    let mut ifaces: *mut sys::virDomainInterfacePtr = std::ptr::null_mut();
    // SAFETY: `dom` is valid for the call; libvirt stores a malloc'ed array of `n` interface
    // pointers in `ifaces` on success and leaves it untouched on failure (-1).
    let n = unsafe { sys::virDomainInterfaceAddresses(dom.as_ptr(), &mut ifaces, src, 0) };
    if n < 0 {
        return Err(virt::error::Error::last_error());
    }
    let mut out = Vec::new();
    for i in 0..usize::try_from(n).unwrap_or(0) {
        // SAFETY: `ifaces` holds `n` pointers; each interface (and its `naddrs` addresses) is
        // valid until virDomainInterfaceFree, called once for each right after reading it.
        unsafe {
            let iface = *ifaces.add(i);
            if iface.is_null() {
                continue;
            }
            let interface = lossy((*iface).name);
            let mac = lossy((*iface).hwaddr).to_ascii_lowercase();
            for j in 0..(*iface).naddrs as usize {
                let a = (*iface).addrs.add(j);
                if let Ok(ip) = lossy((*a).addr).parse::<std::net::IpAddr>() {
                    out.push(crate::GuestAddress {
                        interface: interface.clone(),
                        mac: mac.clone(),
                        ip,
                        prefix: u8::try_from((*a).prefix).unwrap_or(u8::MAX),
                        source,
                    });
                }
            }
            sys::virDomainInterfaceFree(iface);
        }
    }
    if !ifaces.is_null() {
        // SAFETY: the array itself, malloc'ed by libvirt, freed once; its entries are freed.
        unsafe { free(ifaces.cast()) };
    }
    Ok(out)
}

impl Libvirt {
    fn fs_freeze_or_thaw(&self, name: &str, freeze: bool) -> Result<u32, HypervisorError> {
        let (dom, _) = self.require(name, Op::Snapshot, &[DomainState::Running])?;
        set_agent_timeout(&dom);
        // SAFETY: `dom` is valid for the call; no mount point list (null, 0): every file
        // system. Failure is reported through the return value and libvirt's last error.
        let ret = unsafe {
            if freeze {
                sys::virDomainFSFreeze(dom.as_ptr(), std::ptr::null_mut(), 0, 0)
            } else {
                sys::virDomainFSThaw(dom.as_ptr(), std::ptr::null_mut(), 0, 0)
            }
        };
        if ret < 0 {
            let e = virt::error::Error::last_error();
            if agent_absent(e.code()) {
                return Err(HypervisorError::NoGuestAgent { name: name.into() });
            }
            return Err(self.classify(Op::Snapshot, name, e));
        }
        tracing::info!(
            domain = name,
            freeze,
            file_systems = ret,
            "guest file systems {}",
            if freeze { "frozen" } else { "thawed" }
        );
        Ok(u32::try_from(ret).unwrap_or(0))
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        if let Err(e) = self.conn.close() {
            tracing::debug!(uri = %self.uri, error = %e, "closing the libvirt connection failed");
        }
    }
}

/// libvirt's largest migration speed (`QEMU_DOMAIN_MIG_BANDWIDTH_MAX`, INT64_MAX bytes/s in
/// MiB/s), which it treats as no limit.
const MIGRATION_SPEED_UNLIMITED_MIB: u64 = (i64::MAX as u64) / (1024 * 1024);

impl Hypervisor for Libvirt {
    fn capabilities(&self) -> Result<Capabilities, HypervisorError> {
        let host = |source| HypervisorError::Host {
            op: Op::Capabilities,
            source,
        };
        let xml = self.conn.get_capabilities().map_err(host)?;
        let mut caps = Capabilities::from_xml(&xml).map_err(|source| HypervisorError::Xml {
            op: Op::Capabilities,
            source,
        })?;
        let mut models = self
            .conn
            .get_cpu_models_names(&caps.arch, 0)
            .map_err(host)?;
        models.sort();
        caps.cpu_models = models;
        Ok(caps)
    }

    fn kvm_status(&self) -> KvmStatus {
        self.kvm
            .get_or_init(|| match self.capabilities() {
                Ok(caps) if caps.domain_types.contains(&DomainType::Kvm) => self.probe.run(),
                Ok(_) => KvmStatus::Missing,
                Err(e) => KvmStatus::Broken {
                    reason: format!("cannot read capabilities: {e}"),
                },
            })
            .clone()
    }

    fn define(&self, spec: &DomainSpec) -> Result<DomainInfo, HypervisorError> {
        let name = spec.name.as_str();
        let xml = spec.to_xml().map_err(|source| HypervisorError::Spec {
            name: name.into(),
            source,
        })?;
        // Refuse clashes ourselves: libvirt would otherwise redefine a same-UUID domain under a
        // new name, and its clash errors are not distinguishable by code.
        for existing in self.list()? {
            let same_name = existing.name == name;
            let same_uuid = existing.uuid == spec.uuid;
            if same_name != same_uuid {
                return Err(HypervisorError::AlreadyExists {
                    name: name.into(),
                    existing: existing.name,
                    uuid: existing.uuid,
                });
            }
        }
        let dom = Domain::define_xml_flags(&self.conn, &xml, sys::VIR_DOMAIN_DEFINE_VALIDATE)
            .map_err(|e| self.classify(Op::Define, name, e))?;
        tracing::info!(domain = name, uuid = %spec.uuid, "domain defined");
        self.info(&dom, name, Op::Define)
    }

    fn start(&self, name: &str) -> Result<(), HypervisorError> {
        let (dom, _) = self.require(name, Op::Start, &[DomainState::Shutoff])?;
        dom.create()
            .map_err(|e| self.classify(Op::Start, name, e))?;
        tracing::info!(domain = name, "domain started");
        Ok(())
    }

    fn start_paused(&self, name: &str) -> Result<(), HypervisorError> {
        let (dom, _) = self.require(name, Op::Start, &[DomainState::Shutoff])?;
        dom.create_with_flags(sys::VIR_DOMAIN_START_PAUSED)
            .map_err(|e| self.classify(Op::Start, name, e))?;
        tracing::info!(domain = name, "domain started paused");
        Ok(())
    }

    fn shutdown(&self, name: &str, mode: ShutdownMode) -> Result<(), HypervisorError> {
        let (dom, _) = self.require(name, Op::Shutdown, ACTIVE)?;
        let flags = match mode {
            ShutdownMode::Acpi => sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN,
            ShutdownMode::GuestAgent => sys::VIR_DOMAIN_SHUTDOWN_GUEST_AGENT,
        };
        dom.shutdown_flags(flags)
            .map_err(|e| match (mode, e.code()) {
                (
                    ShutdownMode::GuestAgent,
                    ErrorNumber::ArgumentUnsupported
                    | ErrorNumber::AgentUnresponsive
                    | ErrorNumber::AgentUnsynced
                    | ErrorNumber::AgentCommandTimeout,
                ) => HypervisorError::NoGuestAgent { name: name.into() },
                _ => self.classify(Op::Shutdown, name, e),
            })?;
        tracing::info!(domain = name, ?mode, "domain shutdown requested");
        Ok(())
    }

    fn reboot(&self, name: &str) -> Result<(), HypervisorError> {
        let (dom, _) = self.require(name, Op::Reboot, ACTIVE)?;
        dom.reboot(sys::VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
            .map_err(|e| self.classify(Op::Reboot, name, e))?;
        tracing::info!(domain = name, "domain reboot requested");
        Ok(())
    }

    fn destroy(&self, name: &str) -> Result<(), HypervisorError> {
        let (dom, _) = self.require(name, Op::Destroy, ACTIVE)?;
        dom.destroy()
            .map_err(|e| self.classify(Op::Destroy, name, e))?;
        tracing::info!(domain = name, "domain destroyed");
        Ok(())
    }

    fn undefine(&self, name: &str) -> Result<(), HypervisorError> {
        let (dom, _) = self.require(name, Op::Undefine, &[DomainState::Shutoff])?;
        let flags = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
            | sys::VIR_DOMAIN_UNDEFINE_NVRAM;
        dom.undefine_flags(flags)
            .map_err(|e| self.classify(Op::Undefine, name, e))?;
        tracing::info!(domain = name, "domain undefined");
        Ok(())
    }

    fn suspend(&self, name: &str) -> Result<(), HypervisorError> {
        let (dom, state) = self.require(
            name,
            Op::Suspend,
            &[DomainState::Running, DomainState::Paused],
        )?;
        if state == DomainState::Running {
            dom.suspend()
                .map_err(|e| self.classify(Op::Suspend, name, e))?;
            tracing::info!(domain = name, "domain suspended");
        }
        Ok(())
    }

    fn resume(&self, name: &str) -> Result<(), HypervisorError> {
        let (dom, state) = self.require(
            name,
            Op::Resume,
            &[DomainState::Running, DomainState::Paused],
        )?;
        if state == DomainState::Paused {
            dom.resume()
                .map_err(|e| self.classify(Op::Resume, name, e))?;
            tracing::info!(domain = name, "domain resumed");
        }
        Ok(())
    }

    fn domain(&self, name: &str) -> Result<DomainInfo, HypervisorError> {
        let dom = self.lookup(name, Op::Inspect)?;
        self.info(&dom, name, Op::Inspect)
    }

    fn list(&self) -> Result<Vec<DomainInfo>, HypervisorError> {
        let domains = self
            .conn
            .list_all_domains(0)
            .map_err(|source| HypervisorError::Host {
                op: Op::List,
                source,
            })?;
        let mut out = Vec::with_capacity(domains.len());
        for dom in &domains {
            let name = dom.get_name().map_err(|source| HypervisorError::Host {
                op: Op::List,
                source,
            })?;
            match self.info(dom, &name, Op::List) {
                Ok(info) => out.push(info),
                // Gone between the listing and the look: it is not there any more.
                Err(HypervisorError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn migrate(&self, name: &str, options: &MigrateOptions) -> Result<(), HypervisorError> {
        let (dom, _) = self.require(
            name,
            Op::Migrate,
            &[DomainState::Running, DomainState::Paused],
        )?;
        if let Some(downtime) = options.max_downtime {
            let ms = u64::try_from(downtime.as_millis()).unwrap_or(u64::MAX);
            dom.migrate_set_max_downtime(ms, 0)
                .map_err(|e| self.classify(Op::Migrate, name, e))?;
        }
        // The bandwidth parameter caps only the memory stream; the disk copy (NBD mirror) runs
        // at the domain's max migration speed, so that is set too (and reset to libvirt's
        // "unlimited" without a cap, since it stays with the domain).
        let speed = options
            .bandwidth_mib
            .unwrap_or(MIGRATION_SPEED_UNLIMITED_MIB);
        dom.migrate_set_max_speed(speed, 0)
            .map_err(|e| self.classify(Op::Migrate, name, e))?;
        // Peer to peer: this host's libvirt daemon drives the whole migration, so it completes
        // (or rolls back) even if Keel's connection drops halfway.
        let mut flags = sys::VIR_MIGRATE_LIVE
            | sys::VIR_MIGRATE_PEER2PEER
            | sys::VIR_MIGRATE_PERSIST_DEST
            | sys::VIR_MIGRATE_UNDEFINE_SOURCE;
        if options.copy_storage {
            flags |= sys::VIR_MIGRATE_NON_SHARED_DISK;
        }
        if options.paused {
            flags |= sys::VIR_MIGRATE_PAUSED;
        }
        let mut params = MigrateParameters {
            uri: options.migrate_uri.clone(),
            bandwidth: options.bandwidth_mib,
            ..MigrateParameters::default()
        };
        if !options.path_map.is_empty() {
            // The destination's definition: this domain's, with its files where the
            // destination keeps them.
            let xml = dom
                .get_xml_desc(sys::VIR_DOMAIN_XML_MIGRATABLE)
                .map_err(|e| self.classify(Op::Migrate, name, e))?;
            let xml = crate::xml::map_paths(&xml, &options.path_map);
            params.dest_xml = Some(xml.clone());
            params.persist_xml = Some(xml);
        }
        tracing::info!(domain = name, dest = %options.dest_uri, copy_storage = options.copy_storage, "migrating domain");
        dom.migrate_to_uri3(Some(&options.dest_uri), params, flags)
            .map_err(|e| self.classify(Op::Migrate, name, e))?;
        tracing::info!(domain = name, dest = %options.dest_uri, "domain migrated");
        Ok(())
    }

    fn job_progress(&self, name: &str) -> Result<Option<JobProgress>, HypervisorError> {
        let dom = self.lookup(name, Op::Inspect)?;
        // virDomainGetJobInfo, not ...GetJobStats: the `virt` crate's wrapper of the latter
        // builds a Vec from libvirt's pointer, which is null when no job runs.
        let stats = dom
            .get_job_info()
            .map_err(|e| self.classify(Op::Inspect, name, e))?;
        if stats.r#type == sys::VIR_DOMAIN_JOB_NONE as i32 {
            return Ok(None);
        }
        Ok(Some(JobProgress {
            data_total: stats.data_total.unwrap_or(0),
            data_processed: stats.data_processed.unwrap_or(0),
            data_remaining: stats.data_remaining.unwrap_or(0),
            disk_total: stats.disk_total.unwrap_or(0),
            disk_processed: stats.disk_processed.unwrap_or(0),
            elapsed: std::time::Duration::from_millis(stats.time_elapsed.unwrap_or(0)),
        }))
    }

    fn abort_job(&self, name: &str) -> Result<(), HypervisorError> {
        let dom = self.lookup(name, Op::Migrate)?;
        // SAFETY: `dom` is a valid domain handle for the whole call (it is dropped after);
        // virDomainAbortJob only reads it and reports failure through its return value and
        // libvirt's thread-local last error, read right after.
        let ret = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
        if ret == -1 {
            return Err(self.classify(Op::Migrate, name, virt::error::Error::last_error()));
        }
        tracing::info!(domain = name, "domain job aborted");
        Ok(())
    }

    fn open_console(&self, name: &str) -> Result<Box<dyn Console>, HypervisorError> {
        let (dom, _) = self.require(name, Op::OpenConsole, ACTIVE)?;
        let fail = |e| self.classify(Op::OpenConsole, name, e);
        let stream = Stream::new(&self.conn, 0).map_err(fail)?;
        dom.open_console(None, &stream, sys::VIR_DOMAIN_CONSOLE_FORCE)
            .map_err(fail)?;
        let console = LibvirtConsole::new(stream, name).map_err(|source| HypervisorError::Io {
            op: Op::OpenConsole,
            name: name.into(),
            source,
        })?;
        Ok(Box::new(console))
    }

    fn block_resize(&self, name: &str, disk: &Path, bytes: u64) -> Result<(), HypervisorError> {
        let (dom, _) = self.require(name, Op::BlockResize, ACTIVE)?;
        let path = disk.to_string_lossy();
        dom.block_resize(&path, bytes, sys::VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            .map_err(|e| self.classify(Op::BlockResize, name, e))?;
        tracing::info!(domain = name, disk = %path, bytes, "disk grown live");
        Ok(())
    }

    fn interface_addresses(&self, name: &str) -> Result<Vec<crate::GuestAddress>, HypervisorError> {
        let (dom, _) = self.require(name, Op::Inspect, &[DomainState::Running])?;
        set_agent_timeout(&dom);
        for source in [
            crate::AddressSource::Agent,
            crate::AddressSource::Lease,
            crate::AddressSource::Arp,
        ] {
            match guest_addresses(&dom, source) {
                Ok(found) => {
                    let found: Vec<_> = found.into_iter().filter(|a| !a.is_local()).collect();
                    if !found.is_empty() {
                        return Ok(found);
                    }
                }
                Err(e) if e.code() == ErrorNumber::NoDomain => {
                    return Err(self.classify(Op::Inspect, name, e))
                }
                // No agent (or it is busy), no libvirt network: ask the next source.
                Err(e) => {
                    tracing::trace!(domain = name, ?source, error = %e, "no guest addresses from this source")
                }
            }
        }
        Ok(Vec::new())
    }

    fn agent_ping(&self, name: &str) -> Result<bool, HypervisorError> {
        let (dom, _) = self.require(name, Op::Inspect, &[DomainState::Running])?;
        set_agent_timeout(&dom);
        // guest-get-time: the cheapest agent command libvirt's public API sends.
        match dom.get_time(0) {
            Ok(_) => Ok(true),
            // It answered, with an error of its own: it is there.
            Err(e) if e.code() == ErrorNumber::AgentCommandFailed => Ok(true),
            Err(e) if agent_absent(e.code()) => Ok(false),
            Err(e) => Err(self.classify(Op::Inspect, name, e)),
        }
    }

    fn fs_freeze(&self, name: &str) -> Result<u32, HypervisorError> {
        self.fs_freeze_or_thaw(name, true)
    }

    fn fs_thaw(&self, name: &str) -> Result<u32, HypervisorError> {
        self.fs_freeze_or_thaw(name, false)
    }

    fn snapshot_live(&self, name: &str, snapshot: &str) -> Result<(), HypervisorError> {
        let (dom, _) = self.require(name, Op::Snapshot, ACTIVE)?;
        let xml = crate::xml::snapshot_xml(snapshot);
        // Internal (in the qcow2 files, memory included) and unrecorded by libvirt: the
        // files stay the one place the snapshot lives.
        DomainSnapshot::create_xml(&dom, &xml, sys::VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)
            .map_err(|e| self.classify(Op::Snapshot, name, e))?;
        tracing::info!(domain = name, snapshot, "live snapshot taken");
        Ok(())
    }

    fn stats(&self, name: &str) -> Result<crate::DomainStats, HypervisorError> {
        let (dom, _) = self.require(name, Op::Inspect, ACTIVE)?;
        let fail = |e| self.classify(Op::Inspect, name, e);
        let info = dom.get_info().map_err(fail)?;
        let xml = dom.get_xml_desc(0).map_err(fail)?;
        let (disks, nics) = crate::xml::device_targets(&xml);
        let mut s = crate::DomainStats {
            vcpus: info.nr_virt_cpu,
            cpu_time_ns: info.cpu_time,
            memory_bytes: info.memory.saturating_mul(1024),
            ..crate::DomainStats::default()
        };
        // A device that went away between the XML and the counters is skipped, not an error.
        for d in &disks {
            if let Ok(b) = dom.get_block_stats(d) {
                s.disk_read_bytes += u64::try_from(b.rd_bytes).unwrap_or(0);
                s.disk_write_bytes += u64::try_from(b.wr_bytes).unwrap_or(0);
            }
        }
        for n in &nics {
            if let Ok(i) = dom.interface_stats(n) {
                s.net_rx_bytes += u64::try_from(i.rx_bytes).unwrap_or(0);
                s.net_tx_bytes += u64::try_from(i.tx_bytes).unwrap_or(0);
            }
        }
        Ok(s)
    }

    fn live(&self, name: &str) -> Result<LiveDomain, HypervisorError> {
        let dom = self.lookup(name, Op::Inspect)?;
        self.live_of(&dom, name, Op::Inspect)
    }

    fn set_vcpus(&self, name: &str, vcpus: u32) -> Result<(), HypervisorError> {
        let (dom, _) = self.require(name, Op::Resize, HOTPLUG)?;
        let live = self.live_of(&dom, name, Op::Resize)?;
        if vcpus == 0 || vcpus > live.max_vcpus {
            return Err(HypervisorError::Refused {
                name: name.into(),
                op: Op::Resize,
                reason: format!(
                    "{vcpus} vCPUs is outside 1..={} (its maximum until restarted)",
                    live.max_vcpus
                ),
            });
        }
        if vcpus != live.vcpus {
            dom.set_vcpus_flags(vcpus, sys::VIR_DOMAIN_AFFECT_LIVE)
                .map_err(|e| self.classify(Op::Resize, name, e))?;
            tracing::info!(
                domain = name,
                from = live.vcpus,
                to = vcpus,
                "vCPUs changed live"
            );
        }
        Ok(())
    }

    fn grow_memory(&self, name: &str, memory_mib: u64) -> Result<(), HypervisorError> {
        let (dom, _) = self.require(name, Op::Resize, HOTPLUG)?;
        let live = self.live_of(&dom, name, Op::Resize)?;
        if memory_mib < live.memory_mib || memory_mib > live.max_memory_mib {
            return Err(HypervisorError::Refused {
                name: name.into(),
                op: Op::Resize,
                reason: format!(
                    "memory can only grow live, from {} MiB up to {} MiB",
                    live.memory_mib, live.max_memory_mib
                ),
            });
        }
        if memory_mib > live.memory_mib {
            let xml = crate::xml::dimm_xml(memory_mib - live.memory_mib).map_err(|source| {
                HypervisorError::Spec {
                    name: name.into(),
                    source,
                }
            })?;
            dom.attach_device_flags(&xml, sys::VIR_DOMAIN_AFFECT_LIVE)
                .map_err(|e| self.classify(Op::Resize, name, e))?;
            tracing::info!(
                domain = name,
                from = live.memory_mib,
                to = memory_mib,
                "memory grown live"
            );
        }
        Ok(())
    }

    fn attach_disk(&self, name: &str, disk: &Disk) -> Result<String, HypervisorError> {
        let (dom, _) = self.require(name, Op::AttachDevice, HOTPLUG)?;
        let live = self.live_of(&dom, name, Op::AttachDevice)?;
        if let Some(d) = live.disks.iter().find(|d| d.path == disk.path) {
            return Ok(d.target.clone());
        }
        let target = live.free_disk_target();
        let xml = crate::xml::disk_xml(disk, &target).map_err(|source| HypervisorError::Spec {
            name: name.into(),
            source,
        })?;
        dom.attach_device_flags(&xml, sys::VIR_DOMAIN_AFFECT_LIVE)
            .map_err(|e| self.classify(Op::AttachDevice, name, e))?;
        tracing::info!(domain = name, disk = %disk.path.display(), target, "disk attached live");
        Ok(target)
    }

    fn detach_disk(&self, name: &str, path: &Path) -> Result<(), HypervisorError> {
        let (dom, _) = self.require(name, Op::DetachDevice, HOTPLUG)?;
        let live = self.live_of(&dom, name, Op::DetachDevice)?;
        let Some(d) = live.disks.iter().find(|d| d.path == path) else {
            return Err(HypervisorError::Refused {
                name: name.into(),
                op: Op::DetachDevice,
                reason: format!("it has no disk {}", path.display()),
            });
        };
        let disk = Disk {
            path: path.to_path_buf(),
            format: crate::DiskFormat::Qcow2,
            iotune: None,
        };
        let xml =
            crate::xml::disk_xml(&disk, &d.target).map_err(|source| HypervisorError::Spec {
                name: name.into(),
                source,
            })?;
        dom.detach_device_flags(&xml, sys::VIR_DOMAIN_AFFECT_LIVE)
            .map_err(|e| self.classify(Op::DetachDevice, name, e))?;
        tracing::info!(domain = name, disk = %path.display(), "disk detach requested");
        Ok(())
    }

    fn attach_nic(&self, name: &str, nic: &Nic) -> Result<(), HypervisorError> {
        let (dom, _) = self.require(name, Op::AttachDevice, HOTPLUG)?;
        let live = self.live_of(&dom, name, Op::AttachDevice)?;
        if live.nics.iter().any(|n| n.mac == nic.mac) {
            return Ok(());
        }
        let xml = crate::xml::nic_xml(nic).map_err(|source| HypervisorError::Spec {
            name: name.into(),
            source,
        })?;
        dom.attach_device_flags(&xml, sys::VIR_DOMAIN_AFFECT_LIVE)
            .map_err(|e| self.classify(Op::AttachDevice, name, e))?;
        tracing::info!(domain = name, mac = %nic.mac, bridge = %nic.bridge, "NIC attached live");
        Ok(())
    }

    fn detach_nic(&self, name: &str, mac: MacAddr) -> Result<(), HypervisorError> {
        let (dom, _) = self.require(name, Op::DetachDevice, HOTPLUG)?;
        let live = self.live_of(&dom, name, Op::DetachDevice)?;
        let Some(n) = live.nics.iter().find(|n| n.mac == mac) else {
            return Err(HypervisorError::Refused {
                name: name.into(),
                op: Op::DetachDevice,
                reason: format!("it has no NIC {mac}"),
            });
        };
        let bridge = n.bridge.clone().unwrap_or_default();
        let nic = Nic {
            bridge: crate::BridgeName::new(bridge).map_err(|e| HypervisorError::Refused {
                name: name.into(),
                op: Op::DetachDevice,
                reason: format!("NIC {mac}: {e}"),
            })?,
            mac,
            interface_id: None,
        };
        let xml = crate::xml::nic_xml(&nic).map_err(|source| HypervisorError::Spec {
            name: name.into(),
            source,
        })?;
        dom.detach_device_flags(&xml, sys::VIR_DOMAIN_AFFECT_LIVE)
            .map_err(|e| self.classify(Op::DetachDevice, name, e))?;
        tracing::info!(domain = name, mac = %mac, "NIC detach requested");
        Ok(())
    }
}
