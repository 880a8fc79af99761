use super::*;
use crate::{ConditionStatus, VmUpdate};

/// The body `keel vm create web --image debian --cpus 2 --memory 256MiB --disk 2GiB` sends,
/// with a few more devices.
const CREATE: &str = r#"{
    "metadata": {"name": "web", "labels": {"tier": "front"}},
    "spec": {
        "cpus": 2,
        "memory": "256MiB",
        "disks": [
            {"name": "root", "source": {"type": "image", "image": "debian", "size": "2GiB"}},
            {"name": "data", "source": {"type": "empty", "size": 1073741824}, "bus": "scsi",
             "qos": {"read_iops": 500}}
        ],
        "nics": [{"name": "eth0", "network": "keel0"}],
        "cloud_init": {"hostname": "web", "ssh_keys": ["ssh-ed25519 AAAAC3Nza me@host"]},
        "iso": "installer",
        "boot_order": ["iso", "root", "eth0"],
        "placement": {"node_selector": {"zone": "a"}, "group": "web"}
    }
}"#;

fn create() -> VmCreate {
    serde_json::from_str(CREATE).unwrap()
}

fn spec_err(spec: &VmSpec) -> ValidationError {
    VmCreate {
        metadata: NewMetadata::named(Name::new("vm").unwrap()),
        spec: spec.clone(),
    }
    .validate()
    .unwrap_err()
}

/// Deserialises a create body and returns the error text (the path is keeld's job, through
/// serde_path_to_error; the message must stand on its own).
fn parse_err(body: &str) -> String {
    serde_json::from_str::<VmCreate>(body)
        .unwrap_err()
        .to_string()
}

fn with_spec(spec_json: &str) -> String {
    format!(r#"{{"metadata":{{"name":"vm"}},"spec":{spec_json}}}"#)
}

#[test]
fn create_parses_with_defaults_and_validates() {
    let c = create();
    c.validate().unwrap();
    let s = &c.spec;
    assert_eq!(s.memory, Bytes::from_mib(256));
    assert_eq!(s.cpu_model, CpuModel::Baseline);
    assert_eq!(s.power_state, PowerState::Running);
    assert!(s.autostart);
    assert_eq!(s.ha.policy, HaPolicy::None);
    assert_eq!(s.firmware, None);
    assert_eq!(s.disks[0].bus, None);
    assert_eq!(s.nics[0].model, NicModel::Virtio);
    assert_eq!(s.new_disk_bytes(), 3 << 30);
}

#[test]
fn json_round_trips_canonically() {
    let c = create();
    let json = serde_json::to_value(&c).unwrap();
    // Sizes come back as bytes.
    assert_eq!(json["spec"]["memory"], 256u64 << 20);
    assert_eq!(json["spec"]["disks"][0]["source"]["size"], 2u64 << 30);
    assert_eq!(json["spec"]["cpu_model"], "baseline");
    assert_eq!(serde_json::from_value::<VmCreate>(json).unwrap(), c);

    let vm = Vm {
        metadata: c.metadata.clone().into_metadata(),
        spec: c.spec.clone(),
        status: VmStatus {
            phase: VmPhase::Running,
            node: Some("node2".into()),
            ips: vec!["10.0.0.5".into()],
            conditions: vec![Condition::new(
                Condition::SCHEDULED,
                ConditionStatus::True,
                "Scheduled",
                "",
                "2024-01-01T00:00:00Z",
            )],
            usage: VmUsage {
                cpu_percent: 12.5,
                memory_bytes: 100,
                ..VmUsage::default()
            },
            observed_version: 3,
            ..VmStatus::default()
        },
    };
    let json = serde_json::to_value(&vm).unwrap();
    assert_eq!(json["status"]["phase"], "running");
    assert_eq!(json["status"]["node"], "node2");
    assert_eq!(serde_json::from_value::<Vm>(json).unwrap(), vm);
    // A stored VM without status reads back as pending.
    let bare = serde_json::json!({"metadata": {"name": "x"}, "spec": {"cpus": 1, "memory": "16M"}});
    assert_eq!(
        serde_json::from_value::<Vm>(bare).unwrap().status.phase,
        VmPhase::Pending
    );
}

#[test]
fn issue_3_zero_cpus_is_refused_at_spec_cpus() {
    let err = spec_err(&VmSpec::new(0, Bytes::from_mib(256)));
    assert_eq!(err.field, "spec.cpus");
    assert!(
        err.message.contains("0 CPUs is out of range; use 1 to 255"),
        "{}",
        err.message
    );
    assert_eq!(
        spec_err(&VmSpec::new(256, Bytes::from_mib(256))).field,
        "spec.cpus"
    );
    assert!(VmSpec::new(255, Bytes::from_mib(256)).validate().is_ok());
}

#[test]
fn issue_3_memory_lots_is_refused_naming_the_forms() {
    let err = parse_err(&with_spec(r#"{"cpus":1,"memory":"lots"}"#));
    assert!(err.contains("\"lots\" is not a size"), "{err}");
    assert!(err.contains("256MiB") || err.contains("512MiB"), "{err}");
    let err = parse_err(&with_spec(r#"{"cpus":1,"memory":-1}"#));
    assert!(err.contains("cannot be negative"), "{err}");
}

#[test]
fn issue_3_non_dns_name_is_refused() {
    for bad in ["Web_1", "-web", "web.example", ""] {
        let err = parse_err(&format!(
            r#"{{"metadata":{{"name":"{bad}"}},"spec":{{"cpus":1,"memory":"256MiB"}}}}"#
        ));
        assert!(err.contains("is not a valid name"), "{bad}: {err}");
    }
}

#[test]
fn memory_limits() {
    let err = spec_err(&VmSpec::new(1, Bytes::from_mib(8)));
    assert_eq!(err.field, "spec.memory");
    assert!(
        err.message
            .contains("8 MiB of memory is out of range; use 16 MiB to 4 TiB"),
        "{}",
        err.message
    );
    let err = spec_err(&VmSpec::new(1, Bytes::new(0)));
    assert_eq!(err.field, "spec.memory");
    let err = spec_err(&VmSpec::new(1, Bytes::new(5 * Bytes::TIB)));
    assert_eq!(err.field, "spec.memory");
    let err = spec_err(&VmSpec::new(1, Bytes::new(Bytes::MIB * 100 + 1)));
    assert!(
        err.message.contains("whole number of MiB"),
        "{}",
        err.message
    );
    assert!(VmSpec::new(1, Bytes::from_mib(16)).validate().is_ok());
}

#[test]
fn disk_errors_carry_their_index() {
    let mut s = create().spec;
    s.disks[1].source = DiskSource::Empty {
        size: Bytes::new(0),
    };
    let err = spec_err(&s);
    assert_eq!(err.field, "spec.disks[1].source.size");
    assert!(err.message.contains("out of range"), "{}", err.message);

    let mut s = create().spec;
    s.disks[0].source = DiskSource::Image {
        image: Name::new("debian").unwrap(),
        size: Some(Bytes::new(65 * Bytes::TIB)),
    };
    assert_eq!(spec_err(&s).field, "spec.disks[0].source.size");

    let mut s = create().spec;
    s.disks[1].qos = Some(Qos {
        read_iops: Some(0),
        ..Qos::default()
    });
    assert_eq!(spec_err(&s).field, "spec.disks[1].qos.read_iops");

    let mut s = create().spec;
    s.disks[1].source = DiskSource::Volume {
        volume: Name::new("vol").unwrap(),
    };
    let err = spec_err(&s);
    assert_eq!(err.field, "spec.disks[1].qos");
    assert!(
        err.message.contains("set its limits on the volume"),
        "{}",
        err.message
    );

    let mut s = create().spec;
    s.disks[1].qos = None;
    s.disks[0].source = DiskSource::Volume {
        volume: Name::new("vol").unwrap(),
    };
    s.disks[1].source = DiskSource::Volume {
        volume: Name::new("vol").unwrap(),
    };
    let err = spec_err(&s);
    assert_eq!(err.field, "spec.disks[1].source.volume");
    assert!(err.message.contains("attached twice"));

    let mut s = create().spec;
    let extra = s.disks[1].clone();
    s.disks = (0..17)
        .map(|i| VmDisk {
            name: Name::new(format!("d{i}")).unwrap(),
            ..extra.clone()
        })
        .collect();
    s.boot_order.clear();
    assert_eq!(spec_err(&s).field, "spec.disks");

    let err = parse_err(&with_spec(
        r#"{"cpus":1,"memory":"1G","disks":[{"name":"a","source":{"type":"empty"}}]}"#,
    ));
    assert!(err.contains("missing field `size`"), "{err}");
    let err = parse_err(&with_spec(
        r#"{"cpus":1,"memory":"1G","disks":[{"name":"a","source":{"type":"floppy"}}]}"#,
    ));
    assert!(err.contains("floppy"), "{err}");
}

#[test]
fn device_names_are_unique_and_iso_is_reserved() {
    let mut s = create().spec;
    s.disks[1].name = Name::new("root").unwrap();
    let err = spec_err(&s);
    assert_eq!(err.field, "spec.disks[1].name");
    assert!(
        err.message.contains("already used by disks[0].name"),
        "{}",
        err.message
    );

    let mut s = create().spec;
    s.nics[0].name = Name::new("data").unwrap();
    let err = spec_err(&s);
    assert_eq!(err.field, "spec.nics[0].name");

    let mut s = create().spec;
    s.disks[1].name = Name::new("iso").unwrap();
    assert!(spec_err(&s).message.contains("reserved"));
}

#[test]
fn nic_checks() {
    let mut s = create().spec;
    s.nics[0].network = "not a bridge".into();
    assert_eq!(spec_err(&s).field, "spec.nics[0].network");
    s.nics[0].network = "a-very-long-bridge-name".into();
    assert_eq!(spec_err(&s).field, "spec.nics[0].network");

    let mut s = create().spec;
    let mac: MacAddr = "52:54:00:00:00:10".parse().unwrap();
    s.nics[0].mac = Some(mac);
    s.nics.push(VmNic {
        name: Name::new("eth1").unwrap(),
        ..s.nics[0].clone()
    });
    let err = spec_err(&s);
    assert_eq!(err.field, "spec.nics[1].mac");
    assert!(err.message.contains("nics[0]"));

    let err = parse_err(&with_spec(
        r#"{"cpus":1,"memory":"1G","nics":[{"name":"e","network":"br0","mac":"01:00:00:00:00:01"}]}"#,
    ));
    assert!(err.contains("multicast"), "{err}");

    let mut s = create().spec;
    s.boot_order.clear();
    s.nics = (0..9)
        .map(|i| VmNic {
            name: Name::new(format!("n{i}")).unwrap(),
            ..s.nics[0].clone()
        })
        .collect();
    assert_eq!(spec_err(&s).field, "spec.nics");
}

#[test]
fn boot_order_references_existing_devices() {
    let mut s = create().spec;
    s.boot_order.push(Name::new("cdrom").unwrap());
    let err = spec_err(&s);
    assert_eq!(err.field, "spec.boot_order[3]");
    assert!(err.message.contains("not a disk or NIC"), "{}", err.message);

    let mut s = create().spec;
    s.iso = None;
    let err = spec_err(&s);
    assert_eq!(err.field, "spec.boot_order[0]");
    assert!(err.message.contains("no ISO is attached"));

    let mut s = create().spec;
    s.boot_order.push(Name::new("root").unwrap());
    assert!(spec_err(&s).message.contains("listed twice"));

    let s = create().spec;
    let devices = s.boot_devices();
    assert_eq!(devices.len(), 3);
    assert_eq!(devices[0], BootDevice::Iso);
    assert!(matches!(devices[1], BootDevice::Disk(0, _)));
    assert!(matches!(devices[2], BootDevice::Nic(0, _)));

    let mut s = create().spec;
    s.boot_order.clear();
    let devices = s.boot_devices();
    assert_eq!(devices.len(), 3); // iso, root, data
    assert_eq!(devices[0], BootDevice::Iso);
    s.iso = None;
    assert!(matches!(s.boot_devices()[0], BootDevice::Disk(0, _)));
}

#[test]
fn cpu_models() {
    for (text, model) in [
        ("baseline", CpuModel::Baseline),
        ("host-passthrough", CpuModel::HostPassthrough),
        (
            "Skylake-Client-IBRS",
            CpuModel::Named("Skylake-Client-IBRS".into()),
        ),
    ] {
        assert_eq!(text.parse::<CpuModel>().unwrap(), model);
        assert_eq!(serde_json::to_value(&model).unwrap(), text);
    }
    for bad in ["", "has space", "x/y", &"a".repeat(65)] {
        let err = bad.parse::<CpuModel>().unwrap_err();
        assert!(err.message.contains("not a CPU model"), "{bad}");
    }
}

#[test]
fn cloud_init_checks() {
    let mut s = create().spec;
    let ci = s.cloud_init.as_mut().unwrap();
    ci.ssh_keys.push("not a key".into());
    assert_eq!(spec_err(&s).field, "spec.cloud_init.ssh_keys[1]");

    let mut s = create().spec;
    s.cloud_init.as_mut().unwrap().hostname = Some("bad_host".into());
    assert_eq!(spec_err(&s).field, "spec.cloud_init.hostname");

    let mut s = create().spec;
    s.cloud_init.as_mut().unwrap().user_data = Some("#cloud-config\n".into());
    let err = spec_err(&s);
    assert_eq!(err.field, "spec.cloud_init.user_data");
    assert!(err.message.contains("not both"));

    let mut s = create().spec;
    s.cloud_init.as_mut().unwrap().password = Some(String::new());
    assert_eq!(spec_err(&s).field, "spec.cloud_init.password");

    let ci = CloudInit {
        password: Some("hunter2".into()),
        ..CloudInit::default()
    };
    let debug = format!("{ci:?}");
    assert!(
        !debug.contains("hunter2") && debug.contains("redacted"),
        "{debug}"
    );
    assert!(ci.validate().is_ok());
    let ok = CloudInit {
        hostname: Some("web-1.example.org".into()),
        ..CloudInit::default()
    };
    assert!(ok.validate().is_ok());
}

#[test]
fn placement_and_metadata_labels_are_checked() {
    let mut s = create().spec;
    s.placement
        .node_selector
        .insert("bad key".into(), "x".into());
    assert_eq!(spec_err(&s).field, "spec.placement.node_selector");
    let mut c = create();
    c.metadata.labels.insert("tier".into(), "bad value".into());
    assert_eq!(c.validate().unwrap_err().field, "metadata.labels.tier");
    let err = parse_err(&with_spec(
        r#"{"cpus":1,"memory":"1G","placement":{"node":"Node_1"}}"#,
    ));
    assert!(err.contains("not a valid name"), "{err}");
}

#[test]
fn unknown_and_server_owned_fields_are_refused() {
    let err = parse_err(&with_spec(r#"{"cpus":1,"memory":"1G","cores":2}"#));
    assert!(err.contains("unknown field `cores`"), "{err}");
    let err = parse_err(
        r#"{"metadata":{"name":"vm"},"spec":{"cpus":1,"memory":"1G"},"status":{"phase":"running"}}"#,
    );
    assert!(err.contains("unknown field `status`"), "{err}");
    let err =
        parse_err(r#"{"metadata":{"name":"vm","version":3},"spec":{"cpus":1,"memory":"1G"}}"#);
    assert!(err.contains("unknown field `version`"), "{err}");
    let err = parse_err(&with_spec(r#"{"cpus":"two","memory":"1G"}"#));
    assert!(err.contains("invalid type"), "{err}");
    let err = parse_err(&with_spec(
        r#"{"cpus":1,"memory":"1G","power_state":"off"}"#,
    ));
    assert!(err.contains("unknown variant `off`"), "{err}");
}

#[test]
fn owned_volume_names_are_valid_and_stable() {
    let vm = Name::new("web").unwrap();
    let disk = Name::new("root").unwrap();
    assert_eq!(owned_volume_name(&vm, &disk).as_str(), "web-root");
    let long_vm = Name::new(format!("a{}", "b".repeat(62))).unwrap();
    let long_disk = Name::new(format!("c{}", "d".repeat(30))).unwrap();
    let a = owned_volume_name(&long_vm, &long_disk);
    let b = owned_volume_name(&long_vm, &long_disk);
    assert_eq!(a, b);
    assert_eq!(a.as_str().len(), 63);
    let other = owned_volume_name(
        &long_vm,
        &Name::new(format!("c{}", "e".repeat(30))).unwrap(),
    );
    assert_ne!(a, other);
    // A VM name of 53 characters ending right before the cut must not leave "--".
    let vm53 = Name::new(format!("a{}", "b".repeat(52))).unwrap();
    let n = owned_volume_name(&vm53, &Name::new("x".repeat(20)).unwrap());
    assert!(!n.as_str().contains("--"), "{n}");
}

#[test]
fn derived_macs_are_stable_unicast_and_distinct() {
    let eth0 = Name::new("eth0").unwrap();
    let eth1 = Name::new("eth1").unwrap();
    let a = derived_mac("uid-1", &eth0);
    assert_eq!(a, derived_mac("uid-1", &eth0));
    assert_ne!(a, derived_mac("uid-1", &eth1));
    assert_ne!(a, derived_mac("uid-2", &eth0));
    assert_eq!(&a.octets()[..3], &[0x52, 0x54, 0x00]);
    assert_eq!(a.to_string().parse::<MacAddr>().unwrap(), a);
}

#[test]
fn changed_fields_lists_what_differs() {
    let a = create().spec;
    let mut b = a.clone();
    assert!(a.changed_fields(&b).is_empty());
    b.cpus = 4;
    b.power_state = PowerState::Stopped;
    assert_eq!(a.changed_fields(&b), vec!["cpus", "power_state"]);
}

#[test]
fn phases_and_power_states() {
    assert!(VmPhase::Migrating.is_active());
    assert!(!VmPhase::Stopped.is_active());
    assert!(!VmPhase::Lost.is_active());
    for (phase, text) in [(VmPhase::Scheduling, "scheduling"), (VmPhase::Lost, "lost")] {
        assert_eq!(serde_json::to_value(phase).unwrap(), text);
    }
    assert_eq!(serde_json::to_value(PowerState::Paused).unwrap(), "paused");
}

fn vm() -> Vm {
    let c = create();
    Vm {
        metadata: c.metadata.into_metadata(),
        spec: c.spec,
        status: VmStatus {
            phase: VmPhase::Running,
            node: Some("node1".into()),
            ..VmStatus::default()
        },
    }
}

fn update(json: &str) -> VmUpdate {
    serde_json::from_str(json).unwrap()
}

#[test]
fn update_merges_and_keeps_status() {
    let vm = vm();
    let out = update(r#"{"cpus":4,"memory":"1GiB","placement":{"node":"node2"},"labels":{}}"#)
        .apply(&vm)
        .unwrap();
    assert_eq!(out.spec.cpus, 4);
    assert_eq!(out.spec.memory, Bytes::from_gib(1));
    assert_eq!(out.spec.placement.node.as_ref().unwrap().as_str(), "node2");
    // Untouched parts of placement stay.
    assert_eq!(out.spec.placement.group, vm.spec.placement.group);
    assert_eq!(
        out.spec.placement.node_selector,
        vm.spec.placement.node_selector
    );
    assert!(out.metadata.labels.is_empty());
    assert_eq!(out.status, vm.status);
    assert_eq!(
        vm.spec.changed_fields(&out.spec),
        vec!["cpus", "memory", "placement"]
    );
}

#[test]
fn update_clears_optional_fields() {
    let vm = vm();
    let out = update(r#"{"clear":["iso","boot_order","placement.group","cloud_init"]}"#)
        .apply(&vm)
        .unwrap();
    assert_eq!(out.spec.iso, None);
    assert!(out.spec.boot_order.is_empty());
    assert_eq!(out.spec.placement.group, None);
    assert_eq!(out.spec.cloud_init, None);
}

#[test]
fn update_refusals_name_the_body_field() {
    let vm = vm();
    let err = update(r#"{"cpus":0}"#).apply(&vm).unwrap_err();
    assert_eq!(err.field, "cpus");
    // Clearing the ISO while boot_order still names it.
    let err = update(r#"{"clear":["iso"]}"#).apply(&vm).unwrap_err();
    assert_eq!(err.field, "boot_order[0]");
    let err = update(r#"{"clear":["cpus"]}"#).apply(&vm).unwrap_err();
    assert_eq!(err.field, "clear[0]");
    assert!(
        err.message
            .contains("clearable fields are: firmware, cloud_init"),
        "{}",
        err.message
    );
    let err = update(r#"{"iso":"other","clear":["iso"]}"#)
        .apply(&vm)
        .unwrap_err();
    assert!(err.message.contains("both set and cleared"));
    let err = update(r#"{"clear":["iso","iso"]}"#).apply(&vm).unwrap_err();
    assert_eq!(err.field, "clear[1]");
    let err =
        update(r#"{"disks":[{"name":"a","source":{"type":"empty","size":0}}],"boot_order":[]}"#)
            .apply(&vm)
            .unwrap_err();
    assert_eq!(err.field, "disks[0].source.size");
    let err = update(r#"{"labels":{"x":"a b"}}"#).apply(&vm).unwrap_err();
    assert_eq!(err.field, "labels.x");
    assert!(serde_json::from_str::<VmUpdate>(r#"{"name":"renamed"}"#).is_err());
    assert!(serde_json::from_str::<VmUpdate>(r#"{"memory":"lots"}"#).is_err());
}
