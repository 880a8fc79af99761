//! `keel-virt` against real libvirt and QEMU (TCG): the conformance suite, the golden XML,
//! the tiny test guest booting and counting on its serial console, live migration between two
//! daemons, and the KVM probe.
//!
//! Host tier: needs root and the packages in `system/virt/APT_PACKAGES`. Each test starts its
//! own libvirtd in a mount namespace (see `support`), so no system daemon has to run and the
//! host's libvirt state is never touched. Domain names are unique per run.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use keel_virt::conformance::{self, Fixture};
use keel_virt::{
    Boot, CpuMode, CpuModel, Disk, DiskFormat, DomainName, DomainSpec, DomainState, DomainType,
    Firmware, Hypervisor, KvmProbe, KvmStatus, Libvirt, MigrateOptions,
};
use support::{guest, read_counters, PrivateLibvirtd};
use uuid::Uuid;

/// A name prefix unique to this run.
fn prefix(tag: &str) -> String {
    format!("kt-{tag}-{}", &Uuid::new_v4().simple().to_string()[..8])
}

fn fixture(tag: &str) -> Result<Fixture> {
    let g = guest()?;
    Ok(Fixture {
        kernel: g.kernel.clone(),
        initrd: g.initrd.clone(),
        cmdline: g.cmdline.clone(),
        domain_type: DomainType::Qemu,
        prefix: prefix(tag),
        boot_timeout: Duration::from_secs(60),
    })
}

/// The test guest under TCG, booting as `boot` says.
fn guest_spec(name: &str, boot: Boot, disks: Vec<Disk>) -> Result<DomainSpec> {
    Ok(DomainSpec {
        name: DomainName::new(name)?,
        uuid: Uuid::new_v4(),
        keel_uid: Uuid::new_v4(),
        memory_mib: 128,
        vcpus: 1,
        domain_type: DomainType::Qemu,
        cpu: CpuMode::Model {
            name: CpuModel::new("qemu64")?,
        },
        firmware: Firmware::Bios,
        boot,
        disks,
        nics: Vec::new(),
        cdroms: Vec::new(),
        vnc: None,
        guest_agent: false,
        serial_log: None,
        hotplug: None,
    })
}

fn kernel_boot() -> Result<Boot> {
    let g = guest()?;
    Ok(Boot::Kernel {
        kernel: g.kernel.clone(),
        initrd: Some(g.initrd.clone()),
        cmdline: g.cmdline.clone(),
    })
}

/// Nothing of ours is left in the daemon: no domain, no QEMU process.
fn assert_clean(daemon: &PrivateLibvirtd, lv: &Libvirt) -> Result<()> {
    let left = lv.list()?;
    ensure!(left.is_empty(), "domains left behind: {left:?}");
    let pids = daemon.qemu_pids();
    ensure!(pids.is_empty(), "QEMU processes left behind: {pids:?}");
    Ok(())
}

#[test]
fn conformance_suite_passes_against_libvirt() -> Result<()> {
    let fixture = fixture("conf")?;
    let daemon = PrivateLibvirtd::start("conformance")?;
    let lv = daemon.connect()?;
    let started = Instant::now();
    let passed =
        conformance::run_all(&lv, &fixture).map_err(|e| anyhow!("{e}\n{}", daemon.logs()))?;
    eprintln!(
        "conformance: {} checks passed in {:?}",
        passed.len(),
        started.elapsed()
    );
    assert_clean(&daemon, &lv)
}

#[test]
fn test_guest_counts_on_its_serial_console() -> Result<()> {
    let test_started = Instant::now();
    let g = guest()?;
    let daemon = PrivateLibvirtd::start("console")?;
    let lv = daemon.connect()?;
    let name = prefix("count");

    // Direct kernel boot.
    let spec = guest_spec(&name, kernel_boot()?, Vec::new())?;
    let info = lv.define(&spec)?;
    ensure!(
        info.keel_uid == Some(spec.keel_uid),
        "metadata round trip: {info:?}"
    );
    let started = Instant::now();
    lv.start(&name)?;
    let mut console = lv.open_console(&name)?;
    let counters = read_counters(console.as_mut(), 2, Duration::from_secs(30))
        .with_context(|| format!("QEMU log:\n{}", daemon.qemu_log(&name)))?;
    eprintln!(
        "direct kernel boot under TCG: counters {counters:?} after {:?}",
        started.elapsed()
    );
    // Typing works while the console's reader is blocked receiving (the guest ignores it).
    console.write(b"\r")?;
    read_counters(console.as_mut(), 1, Duration::from_secs(5))?;
    drop(console);
    lv.destroy(&name)?;
    lv.undefine(&name)?;

    // The same guest from its bootable disk image (SeaBIOS -> syslinux -> kernel).
    let tmp = tempfile::tempdir()?;
    let disk_path = tmp.path().join("guest.raw");
    std::fs::copy(&g.disk, &disk_path)?;
    let disk = Disk {
        path: disk_path,
        format: DiskFormat::Raw,
        iotune: None,
    };
    let spec = guest_spec(&name, Boot::Disk, vec![disk])?;
    lv.define(&spec)?;
    let started = Instant::now();
    lv.start(&name)?;
    let mut console = lv.open_console(&name)?;
    let counters = read_counters(console.as_mut(), 2, Duration::from_secs(30))
        .with_context(|| format!("QEMU log:\n{}", daemon.qemu_log(&name)))?;
    eprintln!(
        "disk boot under TCG: counters {counters:?} after {:?}",
        started.elapsed()
    );
    drop(console);
    lv.destroy(&name)?;
    lv.undefine(&name)?;

    assert_clean(&daemon, &lv)?;
    eprintln!("whole test took {:?}", test_started.elapsed());
    Ok(())
}

#[test]
fn live_migration_between_two_daemons_keeps_the_counter_going() -> Result<()> {
    let fixture = fixture("mig")?;
    let a = PrivateLibvirtd::start("mig-a")?;
    let b = PrivateLibvirtd::start("mig-b")?;
    let (lva, lvb) = (a.connect()?, b.connect()?);
    let options = MigrateOptions {
        migrate_uri: Some("tcp://127.0.0.1".into()),
        max_downtime: Some(Duration::from_millis(100)),
        ..MigrateOptions::to(b.uri())
    };

    // The suite's check: defined and running on the destination only.
    conformance::migration(&lva, &lvb, &fixture, &options)
        .map_err(|e| anyhow!("{e}\nsource {}\ndestination {}", a.logs(), b.logs()))?;

    // And the guest itself carries on: its counter continues on the destination.
    let name = format!("{}-counter", fixture.prefix);
    let spec = guest_spec(&name, kernel_boot()?, Vec::new())?;
    lva.define(&spec)?;
    lva.start(&name)?;
    let mut console = lva.open_console(&name)?;
    let before = read_counters(console.as_mut(), 2, Duration::from_secs(30))?;
    drop(console);
    let started = Instant::now();
    lva.migrate(&name, &options)
        .map_err(|e| anyhow!("{e:#}\nsource {}\ndestination {}", a.logs(), b.logs()))?;
    eprintln!("live migration under TCG took {:?}", started.elapsed());
    ensure!(
        matches!(
            lva.domain(&name),
            Err(keel_virt::HypervisorError::NotFound { .. })
        ),
        "gone from the source"
    );
    ensure!(lvb.domain(&name)?.state == DomainState::Running);
    let mut console = lvb.open_console(&name)?;
    let after = read_counters(console.as_mut(), 2, Duration::from_secs(30))?;
    drop(console);
    eprintln!("counter before {before:?}, after {after:?}");
    ensure!(
        after[0] > *before.last().unwrap_or(&0),
        "the counter restarted instead of continuing: before {before:?}, after {after:?}"
    );
    lvb.destroy(&name)?;
    lvb.undefine(&name)?;
    assert_clean(&a, &lva)?;
    assert_clean(&b, &lvb)
}

#[test]
fn live_migration_with_copy_storage_moves_the_disk() -> Result<()> {
    let g = guest()?;
    let a = PrivateLibvirtd::start("copy-a")?;
    let b = PrivateLibvirtd::start("copy-b")?;
    let (lva, lvb) = (a.connect()?, b.connect()?);
    let name = prefix("copy");
    // The same path names a different file in each daemon's namespace, as on two hosts.
    let inside = format!("/var/lib/libvirt/images/{name}.raw");
    let (src, dst) = (a.host_path(&inside), b.host_path(&inside));
    std::fs::copy(&g.disk, &src)?;
    // Non-shared storage: the destination provides an empty image of the same size.
    std::fs::File::create(&dst)?.set_len(std::fs::metadata(&src)?.len())?;
    let disk = Disk {
        path: inside.into(),
        format: DiskFormat::Raw,
        iotune: None,
    };
    lva.define(&guest_spec(&name, Boot::Disk, vec![disk])?)?;
    lva.start(&name)?;
    let mut console = lva.open_console(&name)?;
    let before = read_counters(console.as_mut(), 2, Duration::from_secs(30))
        .with_context(|| format!("QEMU log:\n{}", a.qemu_log(&name)))?;
    drop(console);
    let options = MigrateOptions {
        migrate_uri: Some("tcp://127.0.0.1".into()),
        copy_storage: true,
        ..MigrateOptions::to(b.uri())
    };
    let started = Instant::now();
    lva.migrate(&name, &options)
        .map_err(|e| anyhow!("{e:#}\nsource {}\ndestination {}", a.logs(), b.logs()))?;
    eprintln!(
        "live migration with a 33 MiB disk copy took {:?}",
        started.elapsed()
    );
    ensure!(lvb.domain(&name)?.state == DomainState::Running);
    let mut console = lvb.open_console(&name)?;
    let after = read_counters(console.as_mut(), 2, Duration::from_secs(30))?;
    drop(console);
    ensure!(
        after[0] > *before.last().unwrap_or(&0),
        "the counter restarted: before {before:?}, after {after:?}"
    );
    ensure!(
        std::fs::read(&src)? == std::fs::read(&dst)?,
        "the destination disk holds the source's bytes"
    );
    lvb.destroy(&name)?;
    lvb.undefine(&name)?;
    assert_clean(&a, &lva)?;
    assert_clean(&b, &lvb)
}

#[test]
fn every_device_keel_renders_starts_in_qemu() -> Result<()> {
    let daemon = PrivateLibvirtd::start("devices")?;
    let lv = daemon.connect()?;
    let tmp = tempfile::tempdir()?;
    let qcow2 = tmp.path().join("data.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg("64M")
        .status()?;
    ensure!(status.success(), "qemu-img create failed");
    let vnc = tmp.path().join("vnc.sock");
    let name = prefix("devices");
    let throttled = Disk {
        path: qcow2,
        format: DiskFormat::Qcow2,
        iotune: Some(keel_virt::IoTune {
            total_iops_sec: Some(200),
            read_bytes_sec: Some(10 << 20),
            write_bytes_sec: Some(5 << 20),
            ..Default::default()
        }),
    };
    // Kernel boot plus a throttled qcow2 disk, VNC on a unix socket and the agent channel
    // (NICs need an OVS bridge: the network adapter's tests start them).
    let mut spec = guest_spec(&name, kernel_boot()?, vec![throttled])?;
    spec.vnc = Some(keel_virt::Vnc::Socket { path: vnc.clone() });
    spec.guest_agent = true;
    lv.define(&spec)?;
    lv.start(&name)
        .with_context(|| format!("QEMU log:\n{}", daemon.qemu_log(&name)))?;
    ensure!(lv.domain(&name)?.state == DomainState::Running);
    ensure!(vnc.exists(), "QEMU listens for VNC at {}", vnc.display());
    // The agent channel exists, but no agent runs in the test guest.
    match lv.shutdown(&name, keel_virt::ShutdownMode::GuestAgent) {
        Err(keel_virt::HypervisorError::NoGuestAgent { .. }) => {}
        other => anyhow::bail!("NoGuestAgent from a guest without an agent, got {other:?}"),
    }
    lv.destroy(&name)?;

    // VNC on 127.0.0.1 with a port libvirt picks.
    spec.vnc = Some(keel_virt::Vnc::Loopback);
    spec.guest_agent = false;
    lv.define(&spec)?;
    lv.start(&name)
        .with_context(|| format!("QEMU log:\n{}", daemon.qemu_log(&name)))?;
    let log = daemon.qemu_log(&name);
    ensure!(
        log.contains("-vnc 127.0.0.1:"),
        "VNC on loopback only:\n{log}"
    );
    lv.destroy(&name)?;
    lv.undefine(&name)?;
    assert_clean(&daemon, &lv)
}

#[test]
fn dropping_the_console_of_a_silent_guest_returns_at_once() -> Result<()> {
    let daemon = PrivateLibvirtd::start("silent")?;
    let lv = daemon.connect()?;
    let tmp = tempfile::tempdir()?;
    // An empty disk: the firmware finds nothing to boot and waits, printing nothing more.
    let empty = tmp.path().join("empty.raw");
    std::fs::File::create(&empty)?.set_len(1 << 20)?;
    let name = prefix("silent");
    let disk = Disk {
        path: empty,
        format: DiskFormat::Raw,
        iotune: None,
    };
    lv.define(&guest_spec(&name, Boot::Disk, vec![disk])?)?;
    lv.start(&name)?;
    let mut console = lv.open_console(&name)?;
    let mut buf = [0u8; 4096];
    // Drain whatever the firmware printed, until it falls silent.
    let deadline = Instant::now() + Duration::from_secs(20);
    while console.read(&mut buf, Duration::from_secs(2))? > 0 {
        ensure!(Instant::now() < deadline, "the firmware never fell silent");
    }
    // The console has a reader thread (thread names are cut to 15 bytes by the kernel).
    let comm: String = format!("console-{name}").chars().take(15).collect();
    let readers = || -> usize {
        std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks
                    .filter_map(|t| t.ok())
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .filter(|c| c.trim() == comm)
                    .count()
            })
            .unwrap_or(0)
    };
    ensure!(readers() == 1, "one console reader thread");
    // It is blocked receiving; dropping the console must not wait for data.
    let started = Instant::now();
    drop(console);
    let took = started.elapsed();
    ensure!(
        took < Duration::from_secs(1),
        "dropping the console took {took:?}"
    );
    // And the reader thread ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    while readers() > 0 {
        ensure!(
            Instant::now() < deadline,
            "the console reader thread outlived the console"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the domain's console is free for the next client.
    let console = lv.open_console(&name)?;
    drop(console);
    lv.destroy(&name)?;
    lv.undefine(&name)?;
    assert_clean(&daemon, &lv)
}

#[test]
fn golden_xml_is_accepted_by_libvirt() -> Result<()> {
    let daemon = PrivateLibvirtd::start("golden")?;
    let lv = daemon.connect()?;
    let kvm_offered = lv.capabilities()?.domain_types.contains(&DomainType::Kvm);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut n = 0;
    for entry in std::fs::read_dir(&data)? {
        let path = entry?.path();
        if !path.to_string_lossy().ends_with(".input.toml") {
            continue;
        }
        let mut spec: DomainSpec = toml::from_str(&std::fs::read_to_string(&path)?)?;
        if !kvm_offered && spec.domain_type == DomainType::Kvm {
            // libvirt checks the domain type against the host; keep the rest of the case.
            spec.domain_type = DomainType::Qemu;
            if spec.cpu == CpuMode::HostPassthrough {
                spec.cpu = CpuMode::Model {
                    name: CpuModel::new("qemu64")?,
                };
            }
        }
        let info = lv
            .define(&spec)
            .with_context(|| format!("libvirt refused {}", path.display()))?;
        ensure!(
            info.keel_uid == Some(spec.keel_uid),
            "{}: {info:?}",
            path.display()
        );
        lv.undefine(spec.name.as_str())?;
        n += 1;
    }
    ensure!(n >= 3, "only {n} golden cases");
    assert_clean(&daemon, &lv)
}

#[test]
fn kvm_probe_runs_a_guest_and_reports_kvm() -> Result<()> {
    // The probe's three-instruction guest really runs (under TCG, which always works).
    let probe = KvmProbe::default();
    assert_eq!(probe.run_accel("tcg"), KvmStatus::Usable);
    // Under KVM: whatever this host has, the verdict comes within the probe's timeout.
    let daemon = PrivateLibvirtd::start("probe")?;
    let lv = daemon.connect()?;
    let started = Instant::now();
    let status = lv.kvm_status();
    eprintln!("KVM here: {status} (probed in {:?})", started.elapsed());
    ensure!(started.elapsed() < Duration::from_secs(15));
    if !Path::new("/dev/kvm").exists() {
        ensure!(status == KvmStatus::Missing, "{status}");
    }
    ensure!(lv.kvm_status() == status, "the verdict is remembered");
    Ok(())
}
