//! Rendering a [`DomainSpec`] as libvirt domain XML, and reading back the few bits of
//! libvirt's XML Keel needs (its own metadata).
//!
//! ```text
//!  DomainSpec ──validate()──▶ domain::Domain<'_> (serde types, borrowed) ──quick-xml──▶ String
//! ```
//!
//! The output is deterministic (fixed element order, two-space indent, no XML declaration), so
//! golden files in `tests/data/` compare it byte for byte.

mod devices;
mod domain;
mod targets;

pub(crate) use devices::{dimm_xml, disk_xml, nic_xml};
pub(crate) use targets::device_targets;

use serde::Deserialize;
use uuid::Uuid;

use crate::spec::{Boot, BootDevice, CpuMode, DomainSpec, Firmware, ValidationError, Vnc};

/// XML namespace of the `<metadata>` element Keel puts in every domain it defines.
pub const KEEL_METADATA_NS: &str = "urn:keel:libvirt:vm:1";

/// Why domain XML could not be produced or read.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// The spec is invalid.
    #[error("invalid domain spec")]
    Invalid(#[from] ValidationError),
    /// Serialisation failed (a bug: every valid spec must render).
    #[error("cannot serialise domain XML")]
    Serialize(#[source] quick_xml::SeError),
    /// XML from libvirt did not parse.
    #[error("cannot parse {what} XML from libvirt")]
    Parse {
        /// Which document.
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: quick_xml::DeError,
    },
}

/// Renders an already validated spec.
pub(crate) fn render(spec: &DomainSpec) -> Result<String, XmlError> {
    let mut out = String::new();
    let mut ser = quick_xml::se::Serializer::new(&mut out);
    ser.indent(' ', 2);
    serde::Serialize::serialize(&build(spec)?, ser).map_err(XmlError::Serialize)?;
    out.push('\n');
    Ok(out)
}

/// A path the spec has validated as UTF-8; checked again rather than trusted.
fn utf8<'a>(field: &str, path: &'a std::path::Path) -> Result<&'a str, XmlError> {
    path.to_str().ok_or_else(|| {
        XmlError::Invalid(ValidationError::Malformed {
            field: field.into(),
            value: path.to_string_lossy().into_owned(),
            expected: "a UTF-8 path",
        })
    })
}

fn build(spec: &DomainSpec) -> Result<domain::Domain<'_>, XmlError> {
    use domain as x;

    let (loader, nvram) = match &spec.firmware {
        Firmware::Bios => (None, None),
        Firmware::Uefi {
            loader,
            vars_template,
            nvram,
        } => (
            Some(x::Loader {
                readonly: "yes",
                kind: "pflash",
                path: utf8("firmware.loader", loader)?,
            }),
            Some(x::Nvram {
                template: utf8("firmware.vars_template", vars_template)?,
                path: utf8("firmware.nvram", nvram)?,
            }),
        ),
    };
    // Per-device boot order: the 1-based place of each listed device.
    let order = |dev: BootDevice| match &spec.boot {
        Boot::Order { devices } => devices
            .iter()
            .position(|d| *d == dev)
            .map(|i| x::BootOrder { order: i + 1 }),
        _ => None,
    };
    let os = match &spec.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => x::Os {
            os_type: os_type(),
            loader,
            nvram,
            kernel: Some(utf8("boot.kernel", kernel)?),
            initrd: initrd
                .as_deref()
                .map(|p| utf8("boot.initrd", p))
                .transpose()?,
            cmdline: Some(cmdline.as_str()),
            boot: None,
        },
        Boot::Disk => x::Os {
            os_type: os_type(),
            loader,
            nvram,
            kernel: None,
            initrd: None,
            cmdline: None,
            boot: Some(x::BootDev { dev: "hd" }),
        },
        // libvirt refuses <os><boot dev> together with per-device boot elements.
        Boot::Order { .. } => x::Os {
            os_type: os_type(),
            loader,
            nvram,
            kernel: None,
            initrd: None,
            cmdline: None,
            boot: None,
        },
    };

    let cpu = match &spec.cpu {
        // check='none': libvirt does not compare with the host; QEMU refuses what it cannot do.
        CpuMode::HostPassthrough => x::Cpu {
            mode: "host-passthrough",
            match_: None,
            check: "none",
            migratable: Some("on"),
            model: None,
            numa: numa(spec),
        },
        CpuMode::Model { name } => x::Cpu {
            mode: "custom",
            match_: Some("exact"),
            check: "none",
            migratable: None,
            model: Some(x::CpuModel {
                fallback: "forbid",
                name: name.as_str(),
            }),
            numa: numa(spec),
        },
    };

    let mut disks = Vec::with_capacity(spec.disks.len());
    for (i, d) in spec.disks.iter().enumerate() {
        disks.push(x::Disk {
            kind: "file",
            device: "disk",
            driver: x::DiskDriver {
                name: "qemu",
                format: d.format.as_str(),
                discard: "unmap",
            },
            source: x::FileSource {
                file: utf8("disks.path", &d.path)?,
            },
            target: x::DiskTarget {
                dev: DomainSpec::disk_target(i),
                bus: "virtio",
            },
            iotune: d.iotune.as_ref().map(|t| x::IoTune {
                total_bytes_sec: t.total_bytes_sec,
                read_bytes_sec: t.read_bytes_sec,
                write_bytes_sec: t.write_bytes_sec,
                total_iops_sec: t.total_iops_sec,
                read_iops_sec: t.read_iops_sec,
                write_iops_sec: t.write_iops_sec,
            }),
            boot: order(BootDevice::Disk(i)),
        });
    }

    let mut cdroms = Vec::with_capacity(spec.cdroms.len());
    for (i, c) in spec.cdroms.iter().enumerate() {
        cdroms.push(x::Cdrom {
            kind: "file",
            device: "cdrom",
            driver: x::CdromDriver {
                name: "qemu",
                format: "raw",
            },
            source: x::FileSource {
                file: utf8("cdroms.path", &c.path)?,
            },
            target: x::DiskTarget {
                dev: DomainSpec::cdrom_target(i),
                bus: "sata",
            },
            readonly: x::Empty {},
            boot: order(BootDevice::Cdrom(i)),
        });
    }

    let interfaces = spec
        .nics
        .iter()
        .enumerate()
        .map(|(i, n)| x::Interface {
            kind: "bridge",
            mac: x::MacElement {
                address: n.mac.to_string(),
            },
            source: x::BridgeSource {
                bridge: n.bridge.as_str(),
            },
            virtualport: x::Virtualport {
                kind: "openvswitch",
                parameters: n.interface_id.map(|id| x::VirtualportParameters {
                    interfaceid: id.to_string(),
                }),
            },
            model: x::TypeOnly { kind: "virtio" },
            boot: order(BootDevice::Nic(i)),
        })
        .collect();

    let serial_log = match &spec.serial_log {
        Some(p) => Some(utf8("serial_log", p)?),
        None => None,
    };

    let graphics = match &spec.vnc {
        None => None,
        Some(Vnc::Socket { path }) => Some(x::Graphics {
            kind: "vnc",
            port: None,
            autoport: None,
            listen: x::Listen {
                kind: "socket",
                address: None,
                socket: Some(utf8("vnc.path", path)?),
            },
        }),
        Some(Vnc::Loopback) => Some(x::Graphics {
            kind: "vnc",
            port: Some("-1"),
            autoport: Some("yes"),
            listen: x::Listen {
                kind: "address",
                address: Some("127.0.0.1"),
                socket: None,
            },
        }),
    };

    Ok(x::Domain {
        kind: spec.domain_type.as_str(),
        name: spec.name.as_str(),
        uuid: spec.uuid.to_string(),
        metadata: x::Metadata {
            vm: x::KeelVm {
                xmlns: KEEL_METADATA_NS,
                uid: spec.keel_uid.to_string(),
            },
        },
        max_memory: spec.hotplug.map(|h| x::MaxMemory {
            slots: crate::Hotplug::MEMORY_SLOTS,
            unit: "MiB",
            value: h.max_memory_mib,
        }),
        memory: x::Memory {
            unit: "MiB",
            value: spec.memory_mib,
        },
        vcpu: match spec.hotplug {
            Some(h) if h.max_vcpus > spec.vcpus => x::Vcpu {
                placement: "static",
                current: Some(spec.vcpus),
                count: h.max_vcpus,
            },
            _ => x::Vcpu {
                placement: "static",
                current: None,
                count: spec.vcpus,
            },
        },
        os,
        features: x::Features {
            acpi: x::Empty {},
            apic: x::Empty {},
        },
        cpu,
        clock: x::Clock { offset: "utc" },
        on_poweroff: "destroy",
        on_reboot: "restart",
        on_crash: "destroy",
        devices: x::Devices {
            disk: disks,
            cdrom: cdroms,
            interface: interfaces,
            serial: x::Serial {
                kind: "pty",
                log: serial_log.map(|file| x::SerialLog { file, append: "on" }),
                target: x::SerialTarget { port: 0 },
            },
            console: x::Console {
                kind: "pty",
                target: x::ConsoleTarget {
                    kind: "serial",
                    port: 0,
                },
            },
            channel: spec.guest_agent.then_some(x::Channel {
                kind: "unix",
                target: x::ChannelTarget {
                    kind: "virtio",
                    name: "org.qemu.guest_agent.0",
                },
            }),
            video: graphics.as_ref().map(|_| x::Video {
                model: x::TypeOnly { kind: "vga" },
            }),
            graphics,
            memballoon: x::Memballoon { model: "virtio" },
        },
    })
}

/// The one NUMA cell a domain with hot-add headroom has: every possible vCPU and the boot
/// memory (hot-added DIMMs join it).
fn numa(spec: &DomainSpec) -> Option<domain::Numa> {
    spec.hotplug.map(|h| {
        let last = h.max_vcpus.max(spec.vcpus).saturating_sub(1);
        domain::Numa {
            cell: domain::NumaCell {
                id: 0,
                cpus: if last == 0 {
                    "0".into()
                } else {
                    format!("0-{last}")
                },
                memory: spec.memory_mib,
                unit: "MiB",
            },
        }
    })
}

fn os_type() -> domain::OsType {
    domain::OsType {
        arch: "x86_64",
        machine: "pc",
        value: "hvm",
    }
}

/// Keel's metadata element as libvirt hands it back (`virDomainGetMetadata`), in whatever
/// namespace prefix libvirt chose.
#[derive(Deserialize)]
struct KeelVmIn {
    #[serde(rename = "@uid")]
    uid: Uuid,
}

/// `xml` (as libvirt formats a domain) with every attribute value that is a path under one
/// of `map`'s directories moved to the paired directory. Only whole attribute values that
/// start with the directory and a `/` change, in either quoting style.
pub(crate) fn map_paths(xml: &str, map: &[(std::path::PathBuf, std::path::PathBuf)]) -> String {
    let mut out = xml.to_string();
    for (from, to) in map {
        let from =
            quick_xml::escape::escape(from.to_string_lossy().trim_end_matches('/')).into_owned();
        let to = quick_xml::escape::escape(to.to_string_lossy().trim_end_matches('/')).into_owned();
        for q in ['\'', '"'] {
            out = out.replace(&format!("={q}{from}/"), &format!("={q}{to}/"));
        }
    }
    out
}

/// Reads the Keel VM uid out of the metadata element libvirt returns.
/// `<domainsnapshot>` asking for a snapshot named `name` (libvirt's defaults: internal,
/// memory included for a running domain).
pub(crate) fn snapshot_xml(name: &str) -> String {
    format!(
        "<domainsnapshot><name>{}</name></domainsnapshot>",
        quick_xml::escape::escape(name)
    )
}

pub(crate) fn parse_keel_metadata(xml: &str) -> Result<Uuid, XmlError> {
    let vm: KeelVmIn = quick_xml::de::from_str(xml).map_err(|source| XmlError::Parse {
        what: "metadata",
        source,
    })?;
    Ok(vm.uid)
}

#[cfg(test)]
mod map_paths_tests {
    use std::path::PathBuf;

    #[test]
    fn moves_whole_paths_under_the_directory_only() {
        let xml = "<disk><source file='/a/pool/volumes/vm-root.qcow2'/>\
                   <backingStore><source file=\"/a/pool/images/tiny\"/></backingStore></disk>\
                   <log file='/var/log/x.log'/><x file='/a/poolish/y'/><t>/a/pool/z</t>";
        let map = vec![(PathBuf::from("/a/pool/"), PathBuf::from("/b/pool"))];
        let out = super::map_paths(xml, &map);
        assert!(
            out.contains("file='/b/pool/volumes/vm-root.qcow2'"),
            "{out}"
        );
        assert!(out.contains("file=\"/b/pool/images/tiny\""), "{out}");
        assert!(out.contains("file='/var/log/x.log'"), "{out}");
        assert!(out.contains("file='/a/poolish/y'"), "{out}");
        assert!(
            out.contains("<t>/a/pool/z</t>"),
            "text is left alone: {out}"
        );
    }
}
