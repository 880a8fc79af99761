//! Single device elements for hot-plugging into a running domain (`virDomainAttachDeviceFlags`
//! and `…Detach…`), built from the same serde types as whole domains.

use super::domain as x;
use super::XmlError;
use crate::spec::{Disk, Nic};

fn one<T: serde::Serialize>(root: &str, v: &T) -> Result<String, XmlError> {
    quick_xml::se::to_string_with_root(root, v).map_err(XmlError::Serialize)
}

/// `<disk>` for `disk` at target `target` (`vdb`, …); libvirt matches detaches by target.
pub(crate) fn disk_xml(disk: &Disk, target: &str) -> Result<String, XmlError> {
    let file = super::utf8("disks.path", &disk.path)?;
    one(
        "disk",
        &x::Disk {
            kind: "file",
            device: "disk",
            driver: x::DiskDriver {
                name: "qemu",
                format: disk.format.as_str(),
                discard: "unmap",
            },
            source: x::FileSource { file },
            target: x::DiskTarget {
                dev: target.to_string(),
                bus: "virtio",
            },
            iotune: disk.iotune.as_ref().map(|t| x::IoTune {
                total_bytes_sec: t.total_bytes_sec,
                read_bytes_sec: t.read_bytes_sec,
                write_bytes_sec: t.write_bytes_sec,
                total_iops_sec: t.total_iops_sec,
                read_iops_sec: t.read_iops_sec,
                write_iops_sec: t.write_iops_sec,
            }),
            boot: None,
        },
    )
}

/// `<interface>` for `nic` (an OVS port); libvirt matches detaches by MAC address.
pub(crate) fn nic_xml(nic: &Nic) -> Result<String, XmlError> {
    one(
        "interface",
        &x::Interface {
            kind: "bridge",
            mac: x::MacElement {
                address: nic.mac.to_string(),
            },
            source: x::BridgeSource {
                bridge: nic.bridge.as_str(),
            },
            virtualport: x::Virtualport {
                kind: "openvswitch",
                parameters: nic.interface_id.map(|id| x::VirtualportParameters {
                    interfaceid: id.to_string(),
                }),
            },
            model: x::TypeOnly { kind: "virtio" },
            boot: None,
        },
    )
}

#[derive(serde::Serialize)]
struct Dimm {
    #[serde(rename = "@model")]
    model: &'static str,
    target: DimmTarget,
}

#[derive(serde::Serialize)]
struct DimmTarget {
    size: DimmSize,
    node: u32,
}

#[derive(serde::Serialize)]
struct DimmSize {
    #[serde(rename = "@unit")]
    unit: &'static str,
    #[serde(rename = "$text")]
    value: u64,
}

/// `<memory model='dimm'>` of `mib` MiB in guest NUMA node 0.
pub(crate) fn dimm_xml(mib: u64) -> Result<String, XmlError> {
    one(
        "memory",
        &Dimm {
            model: "dimm",
            target: DimmTarget {
                size: DimmSize {
                    unit: "MiB",
                    value: mib,
                },
                node: 0,
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BridgeName, DiskFormat, MacAddr};

    #[test]
    fn device_elements() {
        let d = Disk {
            path: "/p/v.qcow2".into(),
            format: DiskFormat::Qcow2,
            iotune: None,
        };
        assert_eq!(
            disk_xml(&d, "vdb").unwrap(),
            r#"<disk type="file" device="disk"><driver name="qemu" type="qcow2" discard="unmap"/><source file="/p/v.qcow2"/><target dev="vdb" bus="virtio"/></disk>"#
        );
        let n = Nic {
            bridge: BridgeName::new("br-vms").unwrap(),
            mac: MacAddr::from_octets([0x52, 0x54, 0, 1, 2, 3]).unwrap(),
            interface_id: None,
        };
        assert_eq!(
            nic_xml(&n).unwrap(),
            r#"<interface type="bridge"><mac address="52:54:00:01:02:03"/><source bridge="br-vms"/><virtualport type="openvswitch"/><model type="virtio"/></interface>"#
        );
        assert_eq!(
            dimm_xml(256).unwrap(),
            r#"<memory model="dimm"><target><size unit="MiB">256</size><node>0</node></target></memory>"#
        );
    }
}
