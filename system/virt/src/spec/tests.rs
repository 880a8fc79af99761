use super::*;

fn base() -> DomainSpec {
    DomainSpec {
        name: DomainName::new("vm-1").unwrap(),
        uuid: Uuid::from_u128(1),
        keel_uid: Uuid::from_u128(2),
        memory_mib: 256,
        vcpus: 2,
        domain_type: DomainType::Qemu,
        cpu: CpuMode::Model {
            name: CpuModel::new("qemu64").unwrap(),
        },
        firmware: Firmware::Bios,
        boot: Boot::Kernel {
            kernel: "/boot/vmlinuz".into(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
        },
        disks: vec![],
        nics: vec![],
        cdroms: Vec::new(),
        vnc: None,
        guest_agent: false,
        serial_log: None,
        hotplug: None,
    }
}

fn disk(path: &str) -> Disk {
    Disk {
        path: path.into(),
        format: DiskFormat::Qcow2,
        iotune: None,
    }
}

#[test]
fn base_spec_is_valid() {
    base().validate().unwrap();
}

#[test]
fn memory_and_vcpus_have_limits() {
    let mut s = base();
    s.memory_mib = 8;
    assert!(matches!(
        s.validate(),
        Err(ValidationError::OutOfRange { ref field, value: 8, min: 16, .. }) if field == "memory_mib"
    ));
    let mut s = base();
    s.vcpus = 0;
    assert!(
        matches!(s.validate(), Err(ValidationError::OutOfRange { ref field, .. }) if field == "vcpus")
    );
    s.vcpus = 256;
    assert!(s.validate().is_err());
}

#[test]
fn host_passthrough_needs_kvm() {
    let mut s = base();
    s.cpu = CpuMode::HostPassthrough;
    assert!(matches!(
        s.validate(),
        Err(ValidationError::Conflict { .. })
    ));
    s.domain_type = DomainType::Kvm;
    s.validate().unwrap();
}

#[test]
fn disk_boot_needs_a_disk() {
    let mut s = base();
    s.boot = Boot::Disk;
    assert!(
        matches!(s.validate(), Err(ValidationError::Conflict { ref other, .. }) if other == "disks")
    );
    s.disks.push(disk("/var/lib/keel/a.qcow2"));
    s.validate().unwrap();
}

#[test]
fn paths_must_be_absolute_and_unique() {
    let mut s = base();
    s.disks.push(disk("relative.qcow2"));
    assert!(
        matches!(s.validate(), Err(ValidationError::Malformed { ref field, .. }) if field == "disks[0].path")
    );
    let mut s = base();
    s.disks.push(disk("/a.qcow2"));
    s.disks.push(disk("/a.qcow2"));
    assert!(
        matches!(s.validate(), Err(ValidationError::Duplicate { ref field, .. }) if field == "disks[1].path")
    );
    let mut s = base();
    s.boot = Boot::Kernel {
        kernel: "/boot/vmlinuz\n".into(),
        initrd: None,
        cmdline: String::new(),
    };
    assert!(s.validate().is_err());
}

#[test]
fn too_many_disks_and_nics() {
    let mut s = base();
    s.disks = (0..=DomainSpec::MAX_DISKS)
        .map(|i| disk(&format!("/d{i}")))
        .collect();
    assert!(matches!(
        s.validate(),
        Err(ValidationError::TooMany { max: 16, .. })
    ));
    let mut s = base();
    s.nics = (0..=DomainSpec::MAX_NICS)
        .map(|i| Nic {
            bridge: BridgeName::new("br0").unwrap(),
            mac: MacAddr::from_octets([0x52, 0x54, 0, 0, 0, i as u8]).unwrap(),
            interface_id: None,
        })
        .collect();
    assert!(matches!(
        s.validate(),
        Err(ValidationError::TooMany { max: 8, .. })
    ));
}

#[test]
fn nic_macs_and_interface_ids_are_unique() {
    let nic = Nic {
        bridge: BridgeName::new("br0").unwrap(),
        mac: "52:54:00:00:00:01".parse().unwrap(),
        interface_id: Some(Uuid::from_u128(9)),
    };
    let mut s = base();
    s.nics = vec![nic.clone(), nic.clone()];
    assert!(
        matches!(s.validate(), Err(ValidationError::Duplicate { ref field, .. }) if field == "nics[1].mac")
    );
    let mut other = nic.clone();
    other.mac = "52:54:00:00:00:02".parse().unwrap();
    s.nics = vec![nic, other];
    assert!(
        matches!(s.validate(), Err(ValidationError::Duplicate { ref field, .. }) if field == "nics[1].interface_id")
    );
}

#[test]
fn cmdline_has_a_limit() {
    let mut s = base();
    s.boot = Boot::Kernel {
        kernel: "/k".into(),
        initrd: None,
        cmdline: "x".repeat(DomainSpec::MAX_CMDLINE + 1),
    };
    assert!(matches!(
        s.validate(),
        Err(ValidationError::OutOfRange { max: 2047, .. })
    ));
}

#[test]
fn vnc_socket_path_fits_sun_path() {
    let mut s = base();
    s.vnc = Some(Vnc::Socket {
        path: format!("/{}", "s".repeat(107)).into(),
    });
    assert!(
        matches!(s.validate(), Err(ValidationError::OutOfRange { ref field, .. }) if field == "vnc.path")
    );
}

#[test]
fn disk_targets_follow_position() {
    assert_eq!(DomainSpec::disk_target(0), "vda");
    assert_eq!(DomainSpec::disk_target(15), "vdp");
}

#[test]
fn hotplug_headroom_renders_and_is_checked() {
    let mut s = base();
    s.hotplug = Some(Hotplug {
        max_vcpus: 4,
        max_memory_mib: 1024,
    });
    let xml = s.to_xml().unwrap();
    assert!(
        xml.contains(r#"<maxMemory slots="16" unit="MiB">1024</maxMemory>"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<vcpu placement="static" current="2">4</vcpu>"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<cell id="0" cpus="0-3" memory="256" unit="MiB"/>"#),
        "{xml}"
    );
    s.hotplug = Some(Hotplug {
        max_vcpus: 1,
        max_memory_mib: 1024,
    });
    assert!(s.validate().is_err(), "max below the boot vCPUs");
}

#[test]
fn boot_order_names_existing_devices_once() {
    let mut s = base();
    s.disks.push(disk("/var/lib/keel/a.qcow2"));
    s.cdroms.push(Cdrom {
        path: "/var/lib/keel/a.iso".into(),
    });
    s.boot = Boot::Order {
        devices: vec![BootDevice::Cdrom(0), BootDevice::Disk(0)],
    };
    s.validate().unwrap();
    let xml = s.to_xml().unwrap();
    assert!(!xml.contains("<boot dev="), "{xml}");
    assert!(
        xml.contains(
            "<target dev=\"sda\" bus=\"sata\"/>\n      <readonly/>\n      <boot order=\"1\"/>"
        ),
        "{xml}"
    );
    assert!(
        xml.contains("<target dev=\"vda\" bus=\"virtio\"/>\n      <boot order=\"2\"/>"),
        "{xml}"
    );
    s.boot = Boot::Order {
        devices: vec![BootDevice::Disk(0), BootDevice::Disk(0)],
    };
    assert!(
        matches!(s.validate(), Err(ValidationError::Duplicate { ref field, .. }) if field == "boot.devices[1]")
    );
    s.boot = Boot::Order {
        devices: vec![BootDevice::Nic(0)],
    };
    assert!(
        matches!(s.validate(), Err(ValidationError::Conflict { ref other, .. }) if other == "nics")
    );
    s.boot = Boot::Order { devices: vec![] };
    assert!(s.validate().is_err());
}

#[test]
fn uefi_renders_loader_and_nvram() {
    let mut s = base();
    s.firmware = Firmware::Uefi {
        loader: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
        vars_template: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
        nvram: "/var/lib/keel/pool/nvram/vm-1.fd".into(),
    };
    let xml = s.to_xml().unwrap();
    assert!(
        xml.contains(
            "<loader readonly=\"yes\" type=\"pflash\">/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
        ),
        "{xml}"
    );
    assert!(
        xml.contains("<nvram template=\"/usr/share/OVMF/OVMF_VARS_4M.fd\">/var/lib/keel/pool/nvram/vm-1.fd</nvram>"),
        "{xml}"
    );
    // BIOS has neither.
    assert!(!base().to_xml().unwrap().contains("<loader"));
    s.cdroms = (0..=DomainSpec::MAX_CDROMS)
        .map(|i| Cdrom {
            path: format!("/c/{i}.iso").into(),
        })
        .collect();
    assert!(matches!(s.validate(), Err(ValidationError::TooMany { .. })));
}
