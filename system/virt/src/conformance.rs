//! The [`Hypervisor`] contract as executable checks, run against every implementation: the
//! fake in unit tests, libvirt in `tests/real_libvirt.rs`. A check that passes on one and not
//! the other is a bug in the fake or in the adapter.
//!
//! Checks never panic; each returns the first broken expectation as a [`ConformanceError`].
//! Every domain a check creates is named `<prefix>-<check>` and is destroyed and undefined when
//! the check ends, pass or fail.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::{
    Boot, CpuMode, CpuModel, DomainEvent, DomainName, DomainSpec, DomainState, DomainType,
    Firmware, Hypervisor, HypervisorError, MigrateOptions, ShutdownMode, StateWatcher,
};

/// What the checks need from the host: a bootable guest and limits.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Kernel of the test guest (see `tests/guest/build.sh`).
    pub kernel: PathBuf,
    /// Its initrd.
    pub initrd: PathBuf,
    /// Its command line.
    pub cmdline: String,
    /// Domain type to run it with (TCG where KVM is broken).
    pub domain_type: DomainType,
    /// Prefix of every domain name the suite creates; unique per run.
    pub prefix: String,
    /// How long a guest may take to boot and react to ACPI.
    pub boot_timeout: Duration,
}

impl Fixture {
    /// A fixture for hypervisors that run nothing (the fake).
    pub fn for_fake() -> Self {
        Self {
            kernel: PathBuf::from("/fake/vmlinuz"),
            initrd: PathBuf::from("/fake/initrd.img"),
            cmdline: "console=ttyS0".into(),
            domain_type: DomainType::Qemu,
            prefix: "conformance".into(),
            boot_timeout: Duration::from_secs(5),
        }
    }

    /// A spec for the test guest named `<prefix>-<suffix>`, with fresh UUIDs.
    pub fn spec(&self, suffix: &str) -> Result<DomainSpec, ConformanceError> {
        let name = DomainName::new(format!("{}-{suffix}", self.prefix))
            .map_err(|e| fail("fixture", format!("bad name: {e}")))?;
        let model = CpuModel::new("qemu64").map_err(|e| fail("fixture", e.to_string()))?;
        Ok(DomainSpec {
            name,
            uuid: Uuid::new_v4(),
            keel_uid: Uuid::new_v4(),
            memory_mib: 128,
            vcpus: 1,
            domain_type: self.domain_type,
            cpu: CpuMode::Model { name: model },
            firmware: Firmware::Bios,
            boot: Boot::Kernel {
                kernel: self.kernel.clone(),
                initrd: Some(self.initrd.clone()),
                cmdline: self.cmdline.clone(),
            },
            disks: Vec::new(),
            nics: Vec::new(),
            cdroms: Vec::new(),
            vnc: None,
            guest_agent: false,
            serial_log: None,
            hotplug: None,
        })
    }
}

/// A broken expectation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conformance check {check} failed: {detail}")]
pub struct ConformanceError {
    /// The check.
    pub check: &'static str,
    /// What was expected and what happened.
    pub detail: String,
}

fn fail(check: &'static str, detail: impl Into<String>) -> ConformanceError {
    ConformanceError {
        check,
        detail: detail.into(),
    }
}

/// One check: a name and a function.
type Check<H> = (
    &'static str,
    fn(&H, &Fixture) -> Result<(), ConformanceError>,
);

/// Runs every check in order and returns the names of those that passed; stops at the first
/// failure.
pub fn run_all<H: Hypervisor>(
    hv: &H,
    fixture: &Fixture,
) -> Result<Vec<&'static str>, ConformanceError> {
    let checks: &[Check<H>] = &[
        ("capabilities", capabilities),
        ("unknown_domain_is_not_found", unknown_domain_is_not_found),
        ("invalid_spec_defines_nothing", invalid_spec_defines_nothing),
        ("define_update_and_clashes", define_update_and_clashes),
        ("lifecycle_states", lifecycle_states),
        ("guest_agent_answers", guest_agent_answers),
        ("watcher_reports_lifecycle", watcher_reports_lifecycle),
        ("console_follows_the_domain", console_follows_the_domain),
        ("acpi_shutdown_powers_off", acpi_shutdown_powers_off),
        (
            "failed_migration_keeps_running",
            failed_migration_keeps_running,
        ),
        (
            "hotplug_grows_a_running_domain",
            hotplug_grows_a_running_domain,
        ),
    ];
    let mut passed = Vec::new();
    for (name, check) in checks {
        let started = Instant::now();
        check(hv, fixture)?;
        tracing::info!(check = name, elapsed = ?started.elapsed(), "conformance check passed");
        passed.push(*name);
    }
    Ok(passed)
}

/// Live migration from `src` to `dst` (reachable from `src` as `options.dest_uri`): the domain
/// ends up running and defined on `dst` only. Separate from [`run_all`] because it needs two
/// hypervisors.
pub fn migration<H: Hypervisor, D: Hypervisor>(
    src: &H,
    dst: &D,
    fixture: &Fixture,
    options: &MigrateOptions,
) -> Result<(), ConformanceError> {
    const C: &str = "migration";
    let spec = fixture.spec("migrate")?;
    let name = spec.name.to_string();
    let _src_guard = Cleanup {
        hv: src,
        name: &name,
    };
    let _dst_guard = Cleanup {
        hv: dst,
        name: &name,
    };
    src.define(&spec)
        .map_err(|e| fail(C, format!("define: {e}")))?;
    src.start(&name)
        .map_err(|e| fail(C, format!("start: {e}")))?;
    src.migrate(&name, options)
        .map_err(|e| fail(C, format!("migrate: {}", chain(&e))))?;
    expect_missing(C, src, &name)?;
    let info = dst
        .domain(&name)
        .map_err(|e| fail(C, format!("destination lookup: {e}")))?;
    ensure(C, info.state == DomainState::Running, || {
        format!("running on the destination, got {}", info.state)
    })?;
    ensure(C, info.persistent, || {
        "persistent on the destination".into()
    })?;
    ensure(C, info.keel_uid == Some(spec.keel_uid), || {
        format!("Keel uid kept, got {:?}", info.keel_uid)
    })?;
    Ok(())
}

/// Best-effort removal of a check's domain, pass or fail.
struct Cleanup<'a, H: Hypervisor> {
    hv: &'a H,
    name: &'a str,
}

impl<H: Hypervisor> Drop for Cleanup<'_, H> {
    fn drop(&mut self) {
        let _ = self.hv.destroy(self.name);
        let _ = self.hv.undefine(self.name);
    }
}

fn ensure(
    check: &'static str,
    ok: bool,
    expected: impl FnOnce() -> String,
) -> Result<(), ConformanceError> {
    if ok {
        Ok(())
    } else {
        Err(fail(check, format!("expected {}", expected())))
    }
}

/// The error and its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn state(
    check: &'static str,
    hv: &impl Hypervisor,
    name: &str,
) -> Result<DomainState, ConformanceError> {
    hv.domain(name)
        .map(|d| d.state)
        .map_err(|e| fail(check, format!("inspect {name}: {e}")))
}

fn expect_state(
    check: &'static str,
    hv: &impl Hypervisor,
    name: &str,
    want: DomainState,
) -> Result<(), ConformanceError> {
    let got = state(check, hv, name)?;
    ensure(check, got == want, || format!("{name} {want}, got {got}"))
}

/// Waits until `name` is in state `want`, polling; a guest reacts in its own time.
fn wait_state(
    check: &'static str,
    hv: &impl Hypervisor,
    name: &str,
    want: DomainState,
    timeout: Duration,
) -> Result<(), ConformanceError> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = state(check, hv, name)?;
        if got == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(fail(
                check,
                format!("{name} {want} within {timeout:?}, still {got}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn expect_ok<T>(
    check: &'static str,
    what: &str,
    r: Result<T, HypervisorError>,
) -> Result<T, ConformanceError> {
    r.map_err(|e| fail(check, format!("{what}: {}", chain(&e))))
}

fn expect_not_found<T>(
    check: &'static str,
    what: &str,
    r: Result<T, HypervisorError>,
) -> Result<(), ConformanceError> {
    match r {
        Err(HypervisorError::NotFound { .. }) => Ok(()),
        Err(e) => Err(fail(check, format!("{what}: NotFound, got {}", chain(&e)))),
        Ok(_) => Err(fail(check, format!("{what}: NotFound, got success"))),
    }
}

fn expect_invalid_state<T>(
    check: &'static str,
    what: &str,
    r: Result<T, HypervisorError>,
    want_state: DomainState,
) -> Result<(), ConformanceError> {
    match r {
        Err(HypervisorError::InvalidState { state, .. }) if state == want_state => Ok(()),
        Err(e) => Err(fail(
            check,
            format!("{what}: InvalidState({want_state}), got {}", chain(&e)),
        )),
        Ok(_) => Err(fail(check, format!("{what}: InvalidState, got success"))),
    }
}

fn expect_missing(
    check: &'static str,
    hv: &impl Hypervisor,
    name: &str,
) -> Result<(), ConformanceError> {
    expect_not_found(check, "inspect a removed domain", hv.domain(name))?;
    let listed = expect_ok(check, "list", hv.list())?;
    ensure(check, !listed.iter().any(|d| d.name == name), || {
        format!("{name} absent from the listing")
    })
}

fn capabilities(hv: &impl Hypervisor, fixture: &Fixture) -> Result<(), ConformanceError> {
    const C: &str = "capabilities";
    let caps = expect_ok(C, "capabilities", hv.capabilities())?;
    ensure(C, !caps.arch.is_empty(), || "a host architecture".into())?;
    ensure(C, caps.domain_types.contains(&DomainType::Qemu), || {
        format!("TCG (qemu) among {:?}", caps.domain_types)
    })?;
    ensure(C, caps.domain_types.contains(&fixture.domain_type), || {
        format!("{:?} among {:?}", fixture.domain_type, caps.domain_types)
    })?;
    ensure(C, caps.cpu_models.iter().any(|m| m == "qemu64"), || {
        "the migration-safe qemu64 CPU model".into()
    })?;
    let kvm = hv.kvm_status();
    ensure(C, hv.kvm_status() == kvm, || {
        "the same KVM verdict twice".into()
    })?;
    if kvm.domain_type() == DomainType::Kvm {
        ensure(C, caps.domain_types.contains(&DomainType::Kvm), || {
            "kvm offered when KVM is usable".into()
        })?;
    }
    Ok(())
}

fn unknown_domain_is_not_found(
    hv: &impl Hypervisor,
    fixture: &Fixture,
) -> Result<(), ConformanceError> {
    const C: &str = "unknown_domain_is_not_found";
    let name = format!("{}-absent", fixture.prefix);
    let n = name.as_str();
    expect_not_found(C, "inspect", hv.domain(n))?;
    expect_not_found(C, "start", hv.start(n))?;
    expect_not_found(C, "shutdown", hv.shutdown(n, ShutdownMode::Acpi))?;
    expect_not_found(C, "reboot", hv.reboot(n))?;
    expect_not_found(C, "destroy", hv.destroy(n))?;
    expect_not_found(C, "undefine", hv.undefine(n))?;
    expect_not_found(C, "suspend", hv.suspend(n))?;
    expect_not_found(C, "resume", hv.resume(n))?;
    expect_not_found(C, "open_console", hv.open_console(n))?;
    expect_not_found(
        C,
        "migrate",
        hv.migrate(n, &MigrateOptions::to("fake://nowhere")),
    )?;
    Ok(())
}

fn invalid_spec_defines_nothing(
    hv: &impl Hypervisor,
    fixture: &Fixture,
) -> Result<(), ConformanceError> {
    const C: &str = "invalid_spec_defines_nothing";
    let mut spec = fixture.spec("invalid")?;
    spec.vcpus = 0;
    let _guard = Cleanup {
        hv,
        name: spec.name.as_str(),
    };
    match hv.define(&spec) {
        Err(HypervisorError::Spec { .. }) => {}
        Err(e) => return Err(fail(C, format!("Spec error, got {}", chain(&e)))),
        Ok(_) => return Err(fail(C, "Spec error, got success")),
    }
    expect_missing(C, hv, spec.name.as_str())
}

fn define_update_and_clashes(
    hv: &impl Hypervisor,
    fixture: &Fixture,
) -> Result<(), ConformanceError> {
    const C: &str = "define_update_and_clashes";
    let mut spec = fixture.spec("define")?;
    let name = spec.name.to_string();
    let _guard = Cleanup { hv, name: &name };

    let info = expect_ok(C, "define", hv.define(&spec))?;
    ensure(C, info.name == name && info.uuid == spec.uuid, || {
        format!("{name} {} defined, got {info:?}", spec.uuid)
    })?;
    ensure(C, info.state == DomainState::Shutoff, || {
        format!("a new domain shut off, got {}", info.state)
    })?;
    ensure(C, info.persistent, || "a persistent domain".into())?;
    ensure(C, info.keel_uid == Some(spec.keel_uid), || {
        format!(
            "Keel uid {} in metadata, got {:?}",
            spec.keel_uid, info.keel_uid
        )
    })?;
    let again = expect_ok(C, "inspect", hv.domain(&name))?;
    ensure(C, again == info, || {
        format!("{info:?} from inspect, got {again:?}")
    })?;
    let listed = expect_ok(C, "list", hv.list())?;
    ensure(C, listed.contains(&info), || format!("{name} listed"))?;
    let mut names: Vec<&str> = listed.iter().map(|d| d.name.as_str()).collect();
    let unsorted = names.clone();
    names.sort();
    ensure(C, names == unsorted, || "the listing sorted by name".into())?;

    // Same name and UUID: an update.
    spec.memory_mib += 64;
    expect_ok(C, "redefine", hv.define(&spec))?;

    // Same name, other UUID; other name, same UUID: clashes, and nothing changes.
    let mut other_uuid = spec.clone();
    other_uuid.uuid = Uuid::new_v4();
    match hv.define(&other_uuid) {
        Err(HypervisorError::AlreadyExists { existing, .. }) if existing == name => {}
        other => {
            return Err(fail(
                C,
                format!(
                    "AlreadyExists for a reused name, got {:?}",
                    other.map_err(|e| chain(&e))
                ),
            ))
        }
    }
    let mut other_name = fixture.spec("define-other")?;
    other_name.uuid = spec.uuid;
    let _guard2 = Cleanup {
        hv,
        name: other_name.name.as_str(),
    };
    match hv.define(&other_name) {
        Err(HypervisorError::AlreadyExists { existing, .. }) if existing == name => {}
        other => {
            return Err(fail(
                C,
                format!(
                    "AlreadyExists for a reused UUID, got {:?}",
                    other.map_err(|e| chain(&e))
                ),
            ))
        }
    }
    expect_missing(C, hv, other_name.name.as_str())?;
    let after = expect_ok(C, "inspect", hv.domain(&name))?;
    ensure(C, after.uuid == spec.uuid, || {
        "the original UUID kept".into()
    })?;

    expect_ok(C, "undefine", hv.undefine(&name))?;
    expect_missing(C, hv, &name)?;
    expect_not_found(C, "undefine twice", hv.undefine(&name))
}

/// vCPUs and memory grow live within the headroom and never beyond; a disk is plugged in and
/// out of the running domain; a redefinition does not change the running domain; a shut-off
/// domain takes no hot-plug.
fn hotplug_grows_a_running_domain(
    hv: &impl Hypervisor,
    fixture: &Fixture,
) -> Result<(), ConformanceError> {
    const C: &str = "hotplug_grows_a_running_domain";
    let mut spec = fixture.spec("hotplug")?;
    spec.hotplug = Some(crate::Hotplug {
        max_vcpus: 2,
        max_memory_mib: 256,
    });
    let name = spec.name.to_string();
    let n = name.as_str();
    let _guard = Cleanup { hv, name: n };
    let file = std::env::temp_dir().join(format!("{n}.raw"));
    expect_ok(
        C,
        "create the disk file",
        std::fs::write(&file, vec![0u8; 1 << 20]).map_err(|source| HypervisorError::Io {
            op: crate::Op::AttachDevice,
            name: name.clone(),
            source,
        }),
    )?;
    let disk = crate::Disk {
        path: file.clone(),
        format: crate::DiskFormat::Raw,
        iotune: None,
    };
    let result = (|| {
        expect_ok(C, "define", hv.define(&spec))?;
        expect_invalid_state(
            C,
            "set vCPUs while shut off",
            hv.set_vcpus(n, 2),
            DomainState::Shutoff,
        )?;
        expect_ok(C, "start", hv.start(n))?;
        wait_state(C, hv, n, DomainState::Running, fixture.boot_timeout)?;
        let l = expect_ok(C, "live", hv.live(n))?;
        ensure(
            C,
            (l.vcpus, l.max_vcpus, l.memory_mib, l.max_memory_mib) == (1, 2, 128, 256),
            || format!("1 of 2 vCPUs and 128 of 256 MiB, got {l:?}"),
        )?;
        expect_ok(C, "plug a vCPU", hv.set_vcpus(n, 2))?;
        expect_ok(C, "grow memory", hv.grow_memory(n, 192))?;
        let refused = |what: &str, r: Result<(), HypervisorError>| match r {
            Err(HypervisorError::Refused { .. }) => Ok(()),
            Err(e) => Err(fail(C, format!("{what}: Refused, got {}", chain(&e)))),
            Ok(()) => Err(fail(C, format!("{what}: Refused, got success"))),
        };
        refused("3 vCPUs beyond the maximum of 2", hv.set_vcpus(n, 3))?;
        refused("shrink memory", hv.grow_memory(n, 160))?;
        refused("memory beyond the maximum", hv.grow_memory(n, 512))?;
        // A redefinition (what keeld does with every change) leaves the running domain be.
        let mut bigger = spec.clone();
        bigger.vcpus = 2;
        bigger.memory_mib = 192;
        bigger.hotplug = Some(crate::Hotplug {
            max_vcpus: 4,
            max_memory_mib: 384,
        });
        expect_ok(C, "redefine", hv.define(&bigger))?;
        let l = expect_ok(C, "live", hv.live(n))?;
        ensure(
            C,
            (l.vcpus, l.max_vcpus, l.memory_mib, l.max_memory_mib) == (2, 2, 192, 256),
            || format!("2 of 2 vCPUs and 192 of 256 MiB live, got {l:?}"),
        )?;
        let target = expect_ok(C, "attach a disk", hv.attach_disk(n, &disk))?;
        let l = expect_ok(C, "live", hv.live(n))?;
        ensure(
            C,
            l.disks.iter().any(|d| d.path == file && d.target == target),
            || format!("disk {} at {target}, got {:?}", file.display(), l.disks),
        )?;
        expect_ok(C, "detach the disk", hv.detach_disk(n, &file))?;
        // The guest releases the disk (ACPI eject); a request made before its ACPI driver is
        // up is lost, so ask again until it is gone, as keeld's reconciler does.
        let deadline = Instant::now() + fixture.boot_timeout;
        let mut asked = Instant::now();
        loop {
            let l = expect_ok(C, "live", hv.live(n))?;
            if !l.disks.iter().any(|d| d.path == file) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(fail(C, "the detached disk gone within the boot timeout"));
            }
            if asked.elapsed() > Duration::from_secs(5) {
                let _ = hv.detach_disk(n, &file);
                asked = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        refused("detach a disk it does not have", hv.detach_disk(n, &file))?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&file);
    result
}

fn lifecycle_states(hv: &impl Hypervisor, fixture: &Fixture) -> Result<(), ConformanceError> {
    const C: &str = "lifecycle_states";
    let spec = fixture.spec("lifecycle")?;
    let name = spec.name.to_string();
    let n = name.as_str();
    let _guard = Cleanup { hv, name: n };
    expect_ok(C, "define", hv.define(&spec))?;

    // Shut off: only start and undefine apply.
    expect_invalid_state(
        C,
        "destroy while shut off",
        hv.destroy(n),
        DomainState::Shutoff,
    )?;
    expect_invalid_state(
        C,
        "suspend while shut off",
        hv.suspend(n),
        DomainState::Shutoff,
    )?;
    expect_invalid_state(
        C,
        "resume while shut off",
        hv.resume(n),
        DomainState::Shutoff,
    )?;
    expect_invalid_state(
        C,
        "shutdown while shut off",
        hv.shutdown(n, ShutdownMode::Acpi),
        DomainState::Shutoff,
    )?;
    expect_invalid_state(
        C,
        "reboot while shut off",
        hv.reboot(n),
        DomainState::Shutoff,
    )?;
    expect_invalid_state(
        C,
        "console while shut off",
        hv.open_console(n),
        DomainState::Shutoff,
    )?;
    expect_invalid_state(
        C,
        "migrate while shut off",
        hv.migrate(n, &MigrateOptions::to("fake://nowhere")),
        DomainState::Shutoff,
    )?;

    expect_invalid_state(C, "stats while shut off", hv.stats(n), DomainState::Shutoff)?;

    expect_ok(C, "start", hv.start(n))?;
    expect_state(C, hv, n, DomainState::Running)?;
    let stats = expect_ok(C, "stats", hv.stats(n))?;
    ensure(
        C,
        stats.vcpus == spec.vcpus && stats.memory_bytes > 0,
        || format!("stats of a running domain: {stats:?}"),
    )?;
    expect_invalid_state(C, "start twice", hv.start(n), DomainState::Running)?;
    expect_invalid_state(
        C,
        "undefine while running",
        hv.undefine(n),
        DomainState::Running,
    )?;

    expect_ok(C, "suspend", hv.suspend(n))?;
    expect_state(C, hv, n, DomainState::Paused)?;
    expect_ok(C, "suspend twice", hv.suspend(n))?;
    expect_state(C, hv, n, DomainState::Paused)?;
    expect_ok(C, "resume", hv.resume(n))?;
    expect_state(C, hv, n, DomainState::Running)?;
    expect_ok(C, "resume twice", hv.resume(n))?;
    expect_state(C, hv, n, DomainState::Running)?;

    expect_ok(C, "reboot", hv.reboot(n))?;
    ensure(C, state(C, hv, n)?.is_active(), || {
        "still active after a reboot request".into()
    })?;

    expect_ok(C, "destroy", hv.destroy(n))?;
    expect_state(C, hv, n, DomainState::Shutoff)?;
    expect_invalid_state(C, "destroy twice", hv.destroy(n), DomainState::Shutoff)?;

    // A stopped domain starts again.
    expect_ok(C, "start again", hv.start(n))?;
    expect_state(C, hv, n, DomainState::Running)?;
    expect_ok(C, "destroy again", hv.destroy(n))?;

    expect_ok(C, "undefine", hv.undefine(n))?;
    expect_missing(C, hv, n)
}

fn watcher_reports_lifecycle(
    hv: &impl Hypervisor,
    fixture: &Fixture,
) -> Result<(), ConformanceError> {
    const C: &str = "watcher_reports_lifecycle";
    let spec = fixture.spec("watch")?;
    let name = spec.name.to_string();
    let n = name.as_str();
    let _guard = Cleanup { hv, name: n };
    let mut watcher = StateWatcher::new();
    let mine = |events: Vec<DomainEvent>| -> Vec<DomainEvent> {
        events
            .into_iter()
            .filter(|e| match e {
                DomainEvent::Appeared { domain } => domain.name == name,
                DomainEvent::StateChanged { name: n, .. }
                | DomainEvent::Vanished { name: n, .. } => *n == name,
            })
            .collect()
    };
    let mut poll = || {
        watcher
            .poll(hv)
            .map(&mine)
            .map_err(|e| fail(C, format!("poll: {e}")))
    };
    poll()?;

    let info = expect_ok(C, "define", hv.define(&spec))?;
    let events = poll()?;
    ensure(
        C,
        events == vec![DomainEvent::Appeared { domain: info }],
        || format!("Appeared, got {events:?}"),
    )?;
    let events = poll()?;
    ensure(C, events.is_empty(), || {
        format!("no change, got {events:?}")
    })?;

    expect_ok(C, "start", hv.start(n))?;
    let events = poll()?;
    let started = DomainEvent::StateChanged {
        name: name.clone(),
        from: DomainState::Shutoff,
        to: DomainState::Running,
    };
    ensure(C, events == vec![started], || {
        format!("started, got {events:?}")
    })?;

    expect_ok(C, "destroy", hv.destroy(n))?;
    let events = poll()?;
    let stopped = DomainEvent::StateChanged {
        name: name.clone(),
        from: DomainState::Running,
        to: DomainState::Shutoff,
    };
    ensure(C, events == vec![stopped], || {
        format!("stopped, got {events:?}")
    })?;

    expect_ok(C, "undefine", hv.undefine(n))?;
    let events = poll()?;
    let gone = DomainEvent::Vanished {
        name: name.clone(),
        last: DomainState::Shutoff,
    };
    ensure(C, events == vec![gone], || {
        format!("vanished, got {events:?}")
    })
}

fn console_follows_the_domain(
    hv: &impl Hypervisor,
    fixture: &Fixture,
) -> Result<(), ConformanceError> {
    const C: &str = "console_follows_the_domain";
    let spec = fixture.spec("console")?;
    let name = spec.name.to_string();
    let n = name.as_str();
    let _guard = Cleanup { hv, name: n };
    expect_ok(C, "define", hv.define(&spec))?;
    expect_ok(C, "start", hv.start(n))?;
    let mut console = expect_ok(C, "open console", hv.open_console(n))?;
    let mut buf = [0u8; 256];
    console
        .read(&mut buf, Duration::from_millis(200))
        .map_err(|e| fail(C, format!("read from a running domain: {e}")))?;
    // A second client takes the console over; the first is closed sooner or later.
    let mut second = expect_ok(C, "open console again", hv.open_console(n))?;
    drop(console);
    expect_ok(C, "destroy", hv.destroy(n))?;
    // After the domain stops the console ends: reads fail (Closed) rather than hang.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match second.read(&mut buf, Duration::from_millis(200)) {
            Err(_) => break,
            Ok(_) if Instant::now() < deadline => {}
            Ok(_) => return Err(fail(C, "the console to close when the domain stopped")),
        }
    }
    drop(second);
    expect_ok(C, "undefine", hv.undefine(n))
}

/// With an agent channel and the agent running in the guest: it answers, reports addresses
/// (none loopback), freezes and thaws, and powers the guest off. Without a channel: no
/// answer, no freeze, no addresses from it. An unknown domain is `NotFound` throughout.
fn guest_agent_answers(hv: &impl Hypervisor, fixture: &Fixture) -> Result<(), ConformanceError> {
    const C: &str = "guest_agent_answers";
    let absent = format!("{}-absent", fixture.prefix);
    expect_not_found(C, "agent_ping", hv.agent_ping(&absent))?;
    expect_not_found(C, "interface_addresses", hv.interface_addresses(&absent))?;
    expect_not_found(C, "fs_freeze", hv.fs_freeze(&absent))?;
    expect_not_found(C, "fs_thaw", hv.fs_thaw(&absent))?;

    let mut spec = fixture.spec("agent")?;
    spec.guest_agent = true;
    let name = spec.name.to_string();
    let n = name.as_str();
    let _guard = Cleanup { hv, name: n };
    expect_ok(C, "define", hv.define(&spec))?;
    expect_invalid_state(
        C,
        "ping while shut off",
        hv.agent_ping(n),
        DomainState::Shutoff,
    )?;
    expect_ok(C, "start", hv.start(n))?;
    // The agent starts with the guest: wait for its first answer.
    let deadline = Instant::now() + fixture.boot_timeout;
    while !expect_ok(C, "agent_ping", hv.agent_ping(n))? {
        if Instant::now() >= deadline {
            return Err(fail(
                C,
                format!(
                    "the agent of {n} to answer within {:?}",
                    fixture.boot_timeout
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let addrs = expect_ok(C, "interface_addresses", hv.interface_addresses(n))?;
    ensure(C, addrs.iter().all(|a| !a.is_local()), || {
        format!("no loopback or link-local addresses, got {addrs:?}")
    })?;
    expect_ok(C, "fs_freeze", hv.fs_freeze(n))?;
    expect_ok(C, "fs_thaw", hv.fs_thaw(n))?;
    expect_state(C, hv, n, DomainState::Running)?;
    expect_ok(
        C,
        "agent shutdown",
        hv.shutdown(n, ShutdownMode::GuestAgent),
    )?;
    wait_state(C, hv, n, DomainState::Shutoff, fixture.boot_timeout)?;

    // The same guest without a channel: the agent cannot be reached.
    spec.guest_agent = false;
    expect_ok(C, "redefine without a channel", hv.define(&spec))?;
    expect_ok(C, "start", hv.start(n))?;
    ensure(C, !expect_ok(C, "agent_ping", hv.agent_ping(n))?, || {
        "no agent answer without a channel".into()
    })?;
    match hv.fs_freeze(n) {
        Err(HypervisorError::NoGuestAgent { .. }) => {}
        other => {
            return Err(fail(
                C,
                format!(
                    "fs_freeze without a channel: NoGuestAgent, got {:?}",
                    other.map_err(|e| chain(&e))
                ),
            ))
        }
    }
    expect_ok(C, "destroy", hv.destroy(n))?;
    expect_ok(C, "undefine", hv.undefine(n))
}

fn acpi_shutdown_powers_off(
    hv: &impl Hypervisor,
    fixture: &Fixture,
) -> Result<(), ConformanceError> {
    const C: &str = "acpi_shutdown_powers_off";
    let spec = fixture.spec("shutdown")?;
    let name = spec.name.to_string();
    let n = name.as_str();
    let _guard = Cleanup { hv, name: n };
    expect_ok(C, "define", hv.define(&spec))?;
    expect_ok(C, "start", hv.start(n))?;
    // No agent channel: the agent cannot be asked, and nothing happens.
    match hv.shutdown(n, ShutdownMode::GuestAgent) {
        Err(HypervisorError::NoGuestAgent { .. }) => {}
        other => {
            return Err(fail(
                C,
                format!(
                    "NoGuestAgent without a channel, got {:?}",
                    other.map_err(|e| chain(&e))
                ),
            ))
        }
    }
    expect_state(C, hv, n, DomainState::Running)?;
    // A booting guest may not listen to the power button yet: press it again until it powers
    // off, as keeld does, within the boot timeout.
    let deadline = Instant::now() + fixture.boot_timeout;
    loop {
        match hv.shutdown(n, ShutdownMode::Acpi) {
            Ok(()) => {}
            Err(HypervisorError::InvalidState {
                state: DomainState::Shutoff,
                ..
            }) => break,
            Err(e) => return Err(fail(C, format!("shutdown: {}", chain(&e)))),
        }
        if wait_state(C, hv, n, DomainState::Shutoff, Duration::from_secs(2)).is_ok() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(fail(
                C,
                format!("{n} to power off within {:?}", fixture.boot_timeout),
            ));
        }
    }
    let info = expect_ok(C, "inspect", hv.domain(n))?;
    ensure(C, info.persistent, || {
        "still defined after powering off".into()
    })?;
    expect_ok(C, "undefine", hv.undefine(n))
}

fn failed_migration_keeps_running(
    hv: &impl Hypervisor,
    fixture: &Fixture,
) -> Result<(), ConformanceError> {
    const C: &str = "failed_migration_keeps_running";
    let spec = fixture.spec("nomigrate")?;
    let name = spec.name.to_string();
    let n = name.as_str();
    let _guard = Cleanup { hv, name: n };
    expect_ok(C, "define", hv.define(&spec))?;
    expect_ok(C, "start", hv.start(n))?;
    let nowhere =
        MigrateOptions::to("qemu+unix:///system?socket=/nonexistent/keel-conformance.sock");
    ensure(C, hv.migrate(n, &nowhere).is_err(), || {
        "migration to a missing daemon to fail".into()
    })?;
    expect_state(C, hv, n, DomainState::Running)?;
    // No job runs once the migration has failed: no progress, and nothing to abort.
    match hv.job_progress(n) {
        Ok(None) => {}
        other => {
            return Err(fail(
                C,
                format!("job_progress: expected no job, got {other:?}"),
            ))
        }
    }
    match hv.abort_job(n) {
        Err(HypervisorError::InvalidState { .. }) => {}
        other => {
            return Err(fail(
                C,
                format!("abort_job without a job: expected InvalidState, got {other:?}"),
            ))
        }
    }
    expect_state(C, hv, n, DomainState::Running)?;
    expect_ok(C, "destroy", hv.destroy(n))?;
    // Started paused (how a stopped VM moves): paused at once, and resumable.
    expect_ok(C, "start_paused", hv.start_paused(n))?;
    expect_state(C, hv, n, DomainState::Paused)?;
    expect_ok(C, "resume", hv.resume(n))?;
    expect_state(C, hv, n, DomainState::Running)?;
    expect_ok(C, "destroy", hv.destroy(n))?;
    expect_ok(C, "undefine", hv.undefine(n))?;
    expect_missing(C, hv, n)?;
    match hv.job_progress(n) {
        Err(HypervisorError::NotFound { .. }) => Ok(()),
        other => Err(fail(
            C,
            format!("job_progress of a missing domain: expected NotFound, got {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FakeHypervisor, KvmStatus};

    #[test]
    fn the_fake_passes_the_suite() {
        let fake = FakeHypervisor::new("fake://node1");
        let passed = run_all(&fake, &Fixture::for_fake()).unwrap();
        assert_eq!(passed.len(), 11);
        assert!(
            fake.list().unwrap().is_empty(),
            "the suite leaves nothing behind"
        );
    }

    #[test]
    fn the_fake_passes_the_suite_without_kvm() {
        let fake = FakeHypervisor::new("fake://node1").with_kvm(KvmStatus::Missing);
        run_all(&fake, &Fixture::for_fake()).unwrap();
    }

    #[test]
    fn fakes_migrate_between_peers() {
        let a = FakeHypervisor::new("fake://a");
        let b = a.peer("fake://b");
        migration(
            &a,
            &b,
            &Fixture::for_fake(),
            &MigrateOptions::to("fake://b"),
        )
        .unwrap();
        assert!(a.list().unwrap().is_empty());
        assert!(
            b.list().unwrap().is_empty(),
            "the check cleans up the destination"
        );
    }

    #[test]
    fn the_suite_catches_a_fake_that_forgets_a_domain() {
        /// A hypervisor that loses every definition: define "works", inspect finds nothing.
        struct Forgetful(FakeHypervisor);
        impl Hypervisor for Forgetful {
            fn capabilities(&self) -> Result<crate::Capabilities, HypervisorError> {
                self.0.capabilities()
            }
            fn kvm_status(&self) -> KvmStatus {
                self.0.kvm_status()
            }
            fn define(&self, spec: &DomainSpec) -> Result<crate::DomainInfo, HypervisorError> {
                let info = self.0.define(spec)?;
                self.0.undefine(spec.name.as_str())?;
                Ok(info)
            }
            fn start(&self, n: &str) -> Result<(), HypervisorError> {
                self.0.start(n)
            }
            fn start_paused(&self, n: &str) -> Result<(), HypervisorError> {
                self.0.start_paused(n)
            }
            fn shutdown(&self, n: &str, m: ShutdownMode) -> Result<(), HypervisorError> {
                self.0.shutdown(n, m)
            }
            fn reboot(&self, n: &str) -> Result<(), HypervisorError> {
                self.0.reboot(n)
            }
            fn destroy(&self, n: &str) -> Result<(), HypervisorError> {
                self.0.destroy(n)
            }
            fn undefine(&self, n: &str) -> Result<(), HypervisorError> {
                self.0.undefine(n)
            }
            fn suspend(&self, n: &str) -> Result<(), HypervisorError> {
                self.0.suspend(n)
            }
            fn resume(&self, n: &str) -> Result<(), HypervisorError> {
                self.0.resume(n)
            }
            fn domain(&self, n: &str) -> Result<crate::DomainInfo, HypervisorError> {
                self.0.domain(n)
            }
            fn list(&self) -> Result<Vec<crate::DomainInfo>, HypervisorError> {
                self.0.list()
            }
            fn migrate(&self, n: &str, o: &MigrateOptions) -> Result<(), HypervisorError> {
                self.0.migrate(n, o)
            }
            fn open_console(&self, n: &str) -> Result<Box<dyn crate::Console>, HypervisorError> {
                self.0.open_console(n)
            }
            fn job_progress(&self, n: &str) -> Result<Option<crate::JobProgress>, HypervisorError> {
                self.0.job_progress(n)
            }
            fn abort_job(&self, n: &str) -> Result<(), HypervisorError> {
                self.0.abort_job(n)
            }
            fn block_resize(
                &self,
                n: &str,
                d: &std::path::Path,
                b: u64,
            ) -> Result<(), HypervisorError> {
                self.0.block_resize(n, d, b)
            }
            fn snapshot_live(&self, n: &str, s: &str) -> Result<(), HypervisorError> {
                self.0.snapshot_live(n, s)
            }
            fn interface_addresses(
                &self,
                n: &str,
            ) -> Result<Vec<crate::GuestAddress>, HypervisorError> {
                self.0.interface_addresses(n)
            }
            fn agent_ping(&self, n: &str) -> Result<bool, HypervisorError> {
                self.0.agent_ping(n)
            }
            fn fs_freeze(&self, n: &str) -> Result<u32, HypervisorError> {
                self.0.fs_freeze(n)
            }
            fn fs_thaw(&self, n: &str) -> Result<u32, HypervisorError> {
                self.0.fs_thaw(n)
            }
            fn stats(&self, n: &str) -> Result<crate::DomainStats, HypervisorError> {
                self.0.stats(n)
            }
            fn live(&self, n: &str) -> Result<crate::LiveDomain, HypervisorError> {
                self.0.live(n)
            }
            fn set_vcpus(&self, n: &str, v: u32) -> Result<(), HypervisorError> {
                self.0.set_vcpus(n, v)
            }
            fn grow_memory(&self, n: &str, m: u64) -> Result<(), HypervisorError> {
                self.0.grow_memory(n, m)
            }
            fn attach_disk(&self, n: &str, d: &crate::Disk) -> Result<String, HypervisorError> {
                self.0.attach_disk(n, d)
            }
            fn detach_disk(&self, n: &str, p: &std::path::Path) -> Result<(), HypervisorError> {
                self.0.detach_disk(n, p)
            }
            fn attach_nic(&self, n: &str, x: &crate::Nic) -> Result<(), HypervisorError> {
                self.0.attach_nic(n, x)
            }
            fn detach_nic(&self, n: &str, m: crate::MacAddr) -> Result<(), HypervisorError> {
                self.0.detach_nic(n, m)
            }
        }
        let err = run_all(
            &Forgetful(FakeHypervisor::new("fake://x")),
            &Fixture::for_fake(),
        )
        .unwrap_err();
        assert_eq!(err.check, "define_update_and_clashes", "{err}");
    }
}
