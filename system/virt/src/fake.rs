//! [`FakeHypervisor`]: an in-memory [`Hypervisor`] for logic tests (feature `fake`).
//!
//! It keeps the same contract as [`Libvirt`](crate::Libvirt) (the conformance suite runs on
//! both) but no guest runs: a graceful shutdown or reboot takes effect at once, consoles carry
//! only what a test pushes with [`FakeHypervisor::push_console_output`], and files named in
//! specs are not checked. Fakes made with [`FakeHypervisor::peer`] share a registry by URI, so
//! a domain can live-migrate from one to another.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::{
    Capabilities, Console, ConsoleError, DomainInfo, DomainSpec, DomainState, DomainType,
    Hypervisor, HypervisorError, JobProgress, KvmStatus, MigrateOptions, Op, ShutdownMode,
};

/// One fake host.
#[derive(Clone)]
pub struct FakeHypervisor {
    uri: String,
    host: Arc<Mutex<Host>>,
    registry: Arc<Mutex<BTreeMap<String, Arc<Mutex<Host>>>>>,
    kvm: KvmStatus,
}

#[derive(Default)]
struct Host {
    domains: BTreeMap<String, FakeDomain>,
}

struct FakeDomain {
    spec: DomainSpec,
    state: DomainState,
    /// Bytes the "guest" wrote that no console has read yet.
    console_out: Vec<u8>,
    /// Bytes consoles sent to the "guest".
    console_in: Vec<u8>,
    /// Bumped on every start and reboot, so consoles of an earlier boot see EOF.
    boot: u64,
    /// What the running domain has (hot-plugging changes it, a redefinition does not);
    /// taken from the spec at start.
    live: Option<crate::LiveDomain>,
}

/// The devices and size a domain defined as `spec` starts with.
fn live_of_spec(spec: &DomainSpec) -> crate::LiveDomain {
    crate::LiveDomain {
        vcpus: spec.vcpus,
        max_vcpus: spec.hotplug.map_or(spec.vcpus, |h| h.max_vcpus),
        memory_mib: spec.memory_mib,
        max_memory_mib: spec.hotplug.map_or(spec.memory_mib, |h| h.max_memory_mib),
        disks: spec
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| crate::LiveDisk {
                target: DomainSpec::disk_target(i),
                path: d.path.clone(),
            })
            .collect(),
        nics: spec
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| crate::LiveNic {
                mac: n.mac,
                bridge: Some(n.bridge.to_string()),
                tap: Some(format!("vnet{i}")),
            })
            .collect(),
    }
}

impl FakeDomain {
    fn info(&self) -> DomainInfo {
        DomainInfo {
            name: self.spec.name.to_string(),
            uuid: self.spec.uuid,
            state: self.state,
            persistent: true,
            keel_uid: Some(self.spec.keel_uid),
        }
    }
}

fn lock(host: &Mutex<Host>) -> MutexGuard<'_, Host> {
    // A panic while holding the lock leaves plain data behind; carry on with it.
    host.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FakeHypervisor {
    /// A fake host at `uri` (any string; it is the migration address peers use), where KVM
    /// works.
    pub fn new(uri: impl Into<String>) -> Self {
        let uri = uri.into();
        let host = Arc::new(Mutex::new(Host::default()));
        let registry = Arc::new(Mutex::new(BTreeMap::from([(uri.clone(), host.clone())])));
        Self {
            uri,
            host,
            registry,
            kvm: KvmStatus::Usable,
        }
    }

    /// Another fake host at `uri`, reachable from this one (and its peers) for migration.
    pub fn peer(&self, uri: impl Into<String>) -> Self {
        let uri = uri.into();
        let host = Arc::new(Mutex::new(Host::default()));
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uri.clone(), host.clone());
        Self {
            uri,
            host,
            registry: self.registry.clone(),
            kvm: self.kvm.clone(),
        }
    }

    /// Makes [`Hypervisor::kvm_status`] report `status` (and capabilities offer `kvm` only when
    /// it is not [`KvmStatus::Missing`]).
    pub fn with_kvm(mut self, status: KvmStatus) -> Self {
        self.kvm = status;
        self
    }

    /// This fake's URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Appends `bytes` to what the guest of `name` "prints" on its serial console.
    pub fn push_console_output(&self, name: &str, bytes: &[u8]) -> Result<(), HypervisorError> {
        let mut host = lock(&self.host);
        let dom = host
            .domains
            .get_mut(name)
            .ok_or_else(|| HypervisorError::NotFound { name: name.into() })?;
        dom.console_out.extend_from_slice(bytes);
        Ok(())
    }

    /// What consoles have sent to the guest of `name` so far.
    pub fn console_input(&self, name: &str) -> Result<Vec<u8>, HypervisorError> {
        let host = lock(&self.host);
        let dom = host
            .domains
            .get(name)
            .ok_or_else(|| HypervisorError::NotFound { name: name.into() })?;
        Ok(dom.console_in.clone())
    }

    /// The spec a domain was last defined with.
    pub fn spec(&self, name: &str) -> Result<DomainSpec, HypervisorError> {
        let host = lock(&self.host);
        host.domains
            .get(name)
            .map(|d| d.spec.clone())
            .ok_or_else(|| HypervisorError::NotFound { name: name.into() })
    }

    /// Changes what running domain `name` has, or says why not.
    fn hotplug(
        &self,
        name: &str,
        op: Op,
        f: impl FnOnce(&mut crate::LiveDomain) -> Result<(), String>,
    ) -> Result<(), HypervisorError> {
        let allowed = [DomainState::Running, DomainState::Paused];
        self.with_domain(name, op, &allowed, |d| {
            let live = d.live.get_or_insert_with(|| live_of_spec(&d.spec));
            f(live).map_err(|reason| HypervisorError::Refused {
                name: name.into(),
                op,
                reason,
            })
        })?
    }

    /// Runs `f` on domain `name` if its state is one of `allowed`.
    fn with_domain<T>(
        &self,
        name: &str,
        op: Op,
        allowed: &[DomainState],
        f: impl FnOnce(&mut FakeDomain) -> T,
    ) -> Result<T, HypervisorError> {
        let mut host = lock(&self.host);
        let dom = host
            .domains
            .get_mut(name)
            .ok_or_else(|| HypervisorError::NotFound { name: name.into() })?;
        if !allowed.contains(&dom.state) {
            return Err(HypervisorError::InvalidState {
                name: name.into(),
                op,
                state: dom.state,
            });
        }
        Ok(f(dom))
    }
}

impl FakeHypervisor {
    /// A freeze or thaw: the fake guest has an agent when its domain has the channel, and no
    /// file system that freezes (like the tiny guest, whose root is an initramfs).
    fn fake_agent(&self, name: &str) -> Result<u32, HypervisorError> {
        let agent = self.with_domain(name, Op::Snapshot, &[DomainState::Running], |d| {
            d.spec.guest_agent
        })?;
        if agent {
            Ok(0)
        } else {
            Err(HypervisorError::NoGuestAgent { name: name.into() })
        }
    }
}

const ACTIVE: &[DomainState] = &[
    DomainState::Running,
    DomainState::Paused,
    DomainState::ShuttingDown,
    DomainState::Crashed,
    DomainState::PmSuspended,
    DomainState::Unknown,
];

impl Hypervisor for FakeHypervisor {
    fn capabilities(&self) -> Result<Capabilities, HypervisorError> {
        let mut domain_types = vec![DomainType::Qemu];
        if self.kvm != KvmStatus::Missing {
            domain_types.insert(0, DomainType::Kvm);
        }
        Ok(Capabilities {
            arch: "x86_64".into(),
            host_cpu_model: Some("fake-host-cpu".into()),
            domain_types,
            cpu_models: vec!["Nehalem".into(), "qemu64".into()],
        })
    }

    fn kvm_status(&self) -> KvmStatus {
        self.kvm.clone()
    }

    fn define(&self, spec: &DomainSpec) -> Result<DomainInfo, HypervisorError> {
        let name = spec.name.as_str();
        // Render, not just validate: whatever the real one refuses to produce, so does this.
        spec.to_xml().map_err(|source| HypervisorError::Spec {
            name: name.into(),
            source,
        })?;
        let mut host = lock(&self.host);
        for existing in host.domains.values() {
            let same_name = existing.spec.name == spec.name;
            let same_uuid = existing.spec.uuid == spec.uuid;
            if same_name != same_uuid {
                return Err(HypervisorError::AlreadyExists {
                    name: name.into(),
                    existing: existing.spec.name.to_string(),
                    uuid: existing.spec.uuid,
                });
            }
        }
        let dom = host
            .domains
            .entry(name.to_string())
            .or_insert_with(|| FakeDomain {
                spec: spec.clone(),
                state: DomainState::Shutoff,
                console_out: Vec::new(),
                console_in: Vec::new(),
                boot: 0,
                live: None,
            });
        dom.spec = spec.clone();
        Ok(dom.info())
    }

    fn start(&self, name: &str) -> Result<(), HypervisorError> {
        self.with_domain(name, Op::Start, &[DomainState::Shutoff], |d| {
            d.state = DomainState::Running;
            d.boot += 1;
            d.console_out.clear();
            d.live = Some(live_of_spec(&d.spec));
        })
    }

    fn start_paused(&self, name: &str) -> Result<(), HypervisorError> {
        self.with_domain(name, Op::Start, &[DomainState::Shutoff], |d| {
            d.state = DomainState::Paused;
            d.boot += 1;
            d.console_out.clear();
            d.live = Some(live_of_spec(&d.spec));
        })
    }

    fn shutdown(&self, name: &str, mode: ShutdownMode) -> Result<(), HypervisorError> {
        self.with_domain(name, Op::Shutdown, ACTIVE, |d| {
            // The fake guest runs an agent whenever the domain has the channel for one.
            if mode == ShutdownMode::GuestAgent && !d.spec.guest_agent {
                return Err(HypervisorError::NoGuestAgent { name: name.into() });
            }
            d.state = DomainState::Shutoff;
            Ok(())
        })?
    }

    fn reboot(&self, name: &str) -> Result<(), HypervisorError> {
        self.with_domain(name, Op::Reboot, ACTIVE, |d| {
            d.state = DomainState::Running;
            d.boot += 1;
        })
    }

    fn destroy(&self, name: &str) -> Result<(), HypervisorError> {
        self.with_domain(name, Op::Destroy, ACTIVE, |d| {
            d.state = DomainState::Shutoff;
        })
    }

    fn undefine(&self, name: &str) -> Result<(), HypervisorError> {
        self.with_domain(name, Op::Undefine, &[DomainState::Shutoff], |_| ())?;
        lock(&self.host).domains.remove(name);
        Ok(())
    }

    fn suspend(&self, name: &str) -> Result<(), HypervisorError> {
        let allowed = [DomainState::Running, DomainState::Paused];
        self.with_domain(name, Op::Suspend, &allowed, |d| {
            d.state = DomainState::Paused;
        })
    }

    fn resume(&self, name: &str) -> Result<(), HypervisorError> {
        let allowed = [DomainState::Running, DomainState::Paused];
        self.with_domain(name, Op::Resume, &allowed, |d| {
            d.state = DomainState::Running;
        })
    }

    fn domain(&self, name: &str) -> Result<DomainInfo, HypervisorError> {
        self.with_domain(name, Op::Inspect, &ALL, |d| d.info())
    }

    fn list(&self) -> Result<Vec<DomainInfo>, HypervisorError> {
        Ok(lock(&self.host)
            .domains
            .values()
            .map(FakeDomain::info)
            .collect())
    }

    fn migrate(&self, name: &str, options: &MigrateOptions) -> Result<(), HypervisorError> {
        let allowed = [DomainState::Running, DomainState::Paused];
        self.with_domain(name, Op::Migrate, &allowed, |_| ())?;
        let dest = self
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&options.dest_uri)
            .cloned()
            .filter(|h| !Arc::ptr_eq(h, &self.host))
            .ok_or_else(|| HypervisorError::Unreachable {
                uri: options.dest_uri.clone(),
            })?;
        // One host locked at a time: never both, so peers migrating to each other cannot
        // deadlock. The domain is out of both maps only between the two locks.
        let mut dom = lock(&self.host)
            .domains
            .remove(name)
            .ok_or_else(|| HypervisorError::NotFound { name: name.into() })?;
        let mut dest_host = lock(&dest);
        if let Some(clash) = dest_host.domains.get(name) {
            let err = HypervisorError::AlreadyExists {
                name: name.into(),
                existing: clash.spec.name.to_string(),
                uuid: clash.spec.uuid,
            };
            drop(dest_host);
            lock(&self.host).domains.insert(name.into(), dom);
            return Err(err);
        }
        if options.paused {
            dom.state = DomainState::Paused;
        }
        dest_host.domains.insert(name.into(), dom);
        Ok(())
    }

    fn job_progress(&self, name: &str) -> Result<Option<JobProgress>, HypervisorError> {
        // Fake migrations finish inside `migrate`, so no job is ever seen running.
        self.with_domain(name, Op::Inspect, &ALL, |_| None)
    }

    fn abort_job(&self, name: &str) -> Result<(), HypervisorError> {
        let state = self.with_domain(name, Op::Migrate, &ALL, |d| d.state)?;
        Err(HypervisorError::InvalidState {
            name: name.into(),
            op: Op::Migrate,
            state,
        })
    }

    fn open_console(&self, name: &str) -> Result<Box<dyn Console>, HypervisorError> {
        let boot = self.with_domain(name, Op::OpenConsole, ACTIVE, |d| d.boot)?;
        Ok(Box::new(FakeConsole {
            host: self.host.clone(),
            name: name.into(),
            boot,
        }))
    }

    fn block_resize(&self, name: &str, disk: &Path, bytes: u64) -> Result<(), HypervisorError> {
        let known = self.with_domain(name, Op::BlockResize, ACTIVE, |d| {
            d.spec.disks.iter().any(|x| x.path == disk)
        })?;
        if !known || bytes == 0 {
            return Err(HypervisorError::Io {
                op: Op::BlockResize,
                name: name.into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{} is not a disk of {name}", disk.display()),
                ),
            });
        }
        Ok(())
    }

    fn interface_addresses(&self, name: &str) -> Result<Vec<crate::GuestAddress>, HypervisorError> {
        // The fake guest is the tiny test guest: with an agent, each NIC has 192.0.2.N/24,
        // N from the last byte of its MAC.
        self.with_domain(name, Op::Inspect, &[DomainState::Running], |d| {
            if !d.spec.guest_agent {
                return Vec::new();
            }
            d.spec
                .nics
                .iter()
                .enumerate()
                .map(|(i, nic)| {
                    let o = nic.mac.octets();
                    crate::GuestAddress {
                        interface: format!("eth{i}"),
                        mac: nic.mac.to_string().to_ascii_lowercase(),
                        ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                            192,
                            0,
                            2,
                            o[5] % 254 + 1,
                        )),
                        prefix: 24,
                        source: crate::AddressSource::Agent,
                    }
                })
                .collect()
        })
    }

    fn agent_ping(&self, name: &str) -> Result<bool, HypervisorError> {
        self.with_domain(name, Op::Inspect, &[DomainState::Running], |d| {
            d.spec.guest_agent
        })
    }

    fn fs_freeze(&self, name: &str) -> Result<u32, HypervisorError> {
        self.fake_agent(name)
    }

    fn fs_thaw(&self, name: &str) -> Result<u32, HypervisorError> {
        self.fake_agent(name)
    }

    fn snapshot_live(&self, name: &str, snapshot: &str) -> Result<(), HypervisorError> {
        let _ = snapshot;
        self.with_domain(name, Op::Snapshot, ACTIVE, |_| ())
    }

    fn stats(&self, name: &str) -> Result<crate::DomainStats, HypervisorError> {
        // A fake guest that has booted: some CPU time per boot, its whole memory, and the
        // bytes its console printed as disk reads.
        self.with_domain(name, Op::Inspect, ACTIVE, |d| crate::DomainStats {
            vcpus: d.spec.vcpus,
            cpu_time_ns: d.boot * 1_000_000,
            memory_bytes: d.spec.memory_mib * 1024 * 1024,
            disk_read_bytes: d.console_out.len() as u64,
            ..crate::DomainStats::default()
        })
    }

    fn live(&self, name: &str) -> Result<crate::LiveDomain, HypervisorError> {
        self.with_domain(name, Op::Inspect, &ALL, |d| {
            match (&d.live, d.state.is_active()) {
                (Some(l), true) => l.clone(),
                _ => live_of_spec(&d.spec),
            }
        })
    }

    fn set_vcpus(&self, name: &str, vcpus: u32) -> Result<(), HypervisorError> {
        self.hotplug(name, Op::Resize, |l| {
            if vcpus == 0 || vcpus > l.max_vcpus {
                return Err(format!("{vcpus} vCPUs is outside 1..={}", l.max_vcpus));
            }
            l.vcpus = vcpus;
            Ok(())
        })
    }

    fn grow_memory(&self, name: &str, memory_mib: u64) -> Result<(), HypervisorError> {
        self.hotplug(name, Op::Resize, |l| {
            if memory_mib < l.memory_mib || memory_mib > l.max_memory_mib {
                return Err(format!(
                    "memory can only grow live, from {} MiB up to {} MiB",
                    l.memory_mib, l.max_memory_mib
                ));
            }
            l.memory_mib = memory_mib;
            Ok(())
        })
    }

    fn attach_disk(&self, name: &str, disk: &crate::Disk) -> Result<String, HypervisorError> {
        let mut target = String::new();
        self.hotplug(name, Op::AttachDevice, |l| {
            target = match l.disks.iter().find(|d| d.path == disk.path) {
                Some(d) => d.target.clone(),
                None => {
                    let t = l.free_disk_target();
                    l.disks.push(crate::LiveDisk {
                        target: t.clone(),
                        path: disk.path.clone(),
                    });
                    t
                }
            };
            Ok(())
        })?;
        Ok(target)
    }

    fn detach_disk(&self, name: &str, path: &Path) -> Result<(), HypervisorError> {
        self.hotplug(name, Op::DetachDevice, |l| {
            let before = l.disks.len();
            l.disks.retain(|d| d.path != path);
            if l.disks.len() == before {
                return Err(format!("it has no disk {}", path.display()));
            }
            Ok(())
        })
    }

    fn attach_nic(&self, name: &str, nic: &crate::Nic) -> Result<(), HypervisorError> {
        self.hotplug(name, Op::AttachDevice, |l| {
            if !l.nics.iter().any(|n| n.mac == nic.mac) {
                let tap = format!("vnet{}", l.nics.len() + 100);
                l.nics.push(crate::LiveNic {
                    mac: nic.mac,
                    bridge: Some(nic.bridge.to_string()),
                    tap: Some(tap),
                });
            }
            Ok(())
        })
    }

    fn detach_nic(&self, name: &str, mac: crate::MacAddr) -> Result<(), HypervisorError> {
        self.hotplug(name, Op::DetachDevice, |l| {
            let before = l.nics.len();
            l.nics.retain(|n| n.mac != mac);
            if l.nics.len() == before {
                return Err(format!("it has no NIC {mac}"));
            }
            Ok(())
        })
    }
}

const ALL: [DomainState; 7] = [
    DomainState::Running,
    DomainState::Paused,
    DomainState::ShuttingDown,
    DomainState::Shutoff,
    DomainState::Crashed,
    DomainState::PmSuspended,
    DomainState::Unknown,
];

/// A console on a fake domain: reads what tests push, records what is written.
struct FakeConsole {
    host: Arc<Mutex<Host>>,
    name: String,
    boot: u64,
}

impl FakeConsole {
    fn with_live<T>(&self, f: impl FnOnce(&mut FakeDomain) -> T) -> Result<T, ConsoleError> {
        let mut host = lock(&self.host);
        match host.domains.get_mut(&self.name) {
            Some(d) if d.boot == self.boot && d.state.is_active() => Ok(f(d)),
            _ => Err(ConsoleError::Closed),
        }
    }
}

impl Console for FakeConsole {
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, ConsoleError> {
        let n = self.with_live(|d| {
            let n = buf.len().min(d.console_out.len());
            buf[..n].copy_from_slice(&d.console_out[..n]);
            d.console_out.drain(..n);
            n
        })?;
        if n == 0 {
            // Nothing will arrive unless another thread pushes; wait a little like a real read.
            std::thread::sleep(timeout.min(Duration::from_millis(10)));
        }
        Ok(n)
    }

    fn write(&mut self, data: &[u8]) -> Result<(), ConsoleError> {
        self.with_live(|d| d.console_in.extend_from_slice(data))
    }
}
