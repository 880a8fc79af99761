//! [`LiveDomain`]: what a domain has right now (vCPUs, memory, disks, NICs), read from the
//! XML libvirt reports for it: for a running domain its live configuration, which hot-plugging
//! changes, for a shut-off one its definition.

use std::path::PathBuf;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::MacAddr;

/// A domain's size and devices as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveDomain {
    /// vCPUs plugged.
    pub vcpus: u32,
    /// Most vCPUs it can have without a restart.
    pub max_vcpus: u32,
    /// Memory it has (boot memory plus hot-added DIMMs), MiB.
    pub memory_mib: u64,
    /// Most memory it can have without a restart, MiB (`memory_mib` when it has no DIMM slots).
    pub max_memory_mib: u64,
    /// Its file-backed disks (`device='disk'`; CD-ROMs are not listed), in document order.
    pub disks: Vec<LiveDisk>,
    /// Its NICs, in document order.
    pub nics: Vec<LiveNic>,
}

/// A disk of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveDisk {
    /// Target device (`vda`, …).
    pub target: String,
    /// The file behind it.
    pub path: PathBuf,
}

/// A NIC of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveNic {
    /// Guest Ethernet address.
    pub mac: MacAddr,
    /// The bridge it is plugged into.
    pub bridge: Option<String>,
    /// The host's tap device, while the domain runs.
    pub tap: Option<String>,
}

fn attr(e: &BytesStart<'_>, name: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == name)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

fn mib(value: &str, unit: Option<&str>) -> u64 {
    let v: u64 = value.trim().parse().unwrap_or(0);
    match unit.unwrap_or("KiB") {
        "b" | "bytes" => v / (1024 * 1024),
        "KiB" | "k" | "K" => v / 1024,
        "MiB" | "M" => v,
        "GiB" | "G" => v * 1024,
        "TiB" | "T" => v * 1024 * 1024,
        _ => v / 1024,
    }
}

#[derive(Default)]
struct Device {
    is_disk: bool,
    file: Option<String>,
    target: Option<String>,
    mac: Option<String>,
    bridge: Option<String>,
}

impl LiveDomain {
    /// Reads a domain's XML as libvirt formats it. Unknown elements are skipped.
    pub fn from_xml(xml: &str) -> Result<Self, quick_xml::Error> {
        let mut reader = Reader::from_str(xml);
        let mut out = LiveDomain::default();
        let mut path: Vec<Vec<u8>> = Vec::new();
        let mut unit: Option<String> = None;
        let mut current_vcpus: Option<u32> = None;
        let mut dev: Option<Device> = None;
        loop {
            let ev = reader.read_event()?;
            let (e, empty) = match &ev {
                Event::Start(e) => (Some(e.clone()), false),
                Event::Empty(e) => (Some(e.clone()), true),
                _ => (None, false),
            };
            if let Some(e) = e {
                let name = e.name().as_ref().to_vec();
                let depth = path.len();
                match (depth, name.as_slice()) {
                    (1, b"vcpu") => {
                        current_vcpus = attr(&e, b"current").and_then(|c| c.parse().ok())
                    }
                    (1, b"memory") | (1, b"maxMemory") => unit = attr(&e, b"unit"),
                    (2, b"disk") if path.last().map(Vec::as_slice) == Some(b"devices") => {
                        dev = Some(Device {
                            is_disk: attr(&e, b"device").as_deref() == Some("disk"),
                            ..Device::default()
                        })
                    }
                    (2, b"interface") if path.last().map(Vec::as_slice) == Some(b"devices") => {
                        dev = Some(Device::default())
                    }
                    (3, b"source") => {
                        if let Some(d) = dev.as_mut() {
                            d.file = attr(&e, b"file").or(d.file.take());
                            d.bridge = attr(&e, b"bridge").or(d.bridge.take());
                        }
                    }
                    (3, b"target") => {
                        if let Some(d) = dev.as_mut() {
                            d.target = attr(&e, b"dev");
                        }
                    }
                    (3, b"mac") => {
                        if let Some(d) = dev.as_mut() {
                            d.mac = attr(&e, b"address");
                        }
                    }
                    _ => {}
                }
                if !empty {
                    path.push(name);
                } else if depth == 2 {
                    dev = None;
                }
                continue;
            }
            match ev {
                Event::Text(t) => {
                    let text = t.unescape().map(|c| c.into_owned()).unwrap_or_default();
                    match path.as_slice() {
                        [_, last] if last.as_slice() == b"vcpu" => {
                            out.max_vcpus = text.trim().parse().unwrap_or(0)
                        }
                        [_, last] if last.as_slice() == b"memory" => {
                            out.memory_mib = mib(&text, unit.as_deref())
                        }
                        [_, last] if last.as_slice() == b"maxMemory" => {
                            out.max_memory_mib = mib(&text, unit.as_deref())
                        }
                        _ => {}
                    }
                }
                Event::End(_) => {
                    let closed = path.pop();
                    if path.len() == 2 {
                        if let Some(d) = dev.take() {
                            match closed.as_deref() {
                                Some(b"disk") => {
                                    if let (true, Some(f), Some(t)) = (d.is_disk, d.file, d.target)
                                    {
                                        out.disks.push(LiveDisk {
                                            target: t,
                                            path: PathBuf::from(f),
                                        });
                                    }
                                }
                                Some(b"interface") => {
                                    if let Some(mac) = d.mac.and_then(|m| m.parse::<MacAddr>().ok())
                                    {
                                        out.nics.push(LiveNic {
                                            mac,
                                            bridge: d.bridge,
                                            tap: d.target,
                                        });
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        out.vcpus = current_vcpus.unwrap_or(out.max_vcpus);
        out.max_memory_mib = out.max_memory_mib.max(out.memory_mib);
        Ok(out)
    }

    /// The first `vdX` target no disk uses, for a disk plugged in now.
    pub fn free_disk_target(&self) -> String {
        (0..crate::DomainSpec::MAX_DISKS + 10)
            .map(crate::DomainSpec::disk_target)
            .find(|t| !self.disks.iter().any(|d| &d.target == t))
            .unwrap_or_else(|| "vdz".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_live_domain() {
        let xml = r#"<domain type='qemu' id='3'>
  <name>hp1</name>
  <maxMemory slots='16' unit='KiB'>524288</maxMemory>
  <memory unit='KiB'>262144</memory>
  <currentMemory unit='KiB'>262144</currentMemory>
  <vcpu placement='static' current='2'>4</vcpu>
  <vcpus><vcpu id='0' enabled='yes' hotpluggable='no' order='1'/></vcpus>
  <cpu mode='custom'><numa><cell id='0' cpus='0-3' memory='131072' unit='KiB'/></numa></cpu>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/p/a.qcow2' index='1'/><backingStore type='file'><source file='/p/img'/></backingStore><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><source file='/p/iso'/><target dev='sda' bus='sata'/></disk>
    <interface type='bridge'><mac address='52:54:00:aa:bb:cc'/><source bridge='br-vms'/><virtualport type='openvswitch'/><target dev='vnet7'/></interface>
    <memory model='dimm'><target><size unit='KiB'>131072</size><node>0</node></target></memory>
  </devices>
</domain>"#;
        let l = LiveDomain::from_xml(xml).unwrap();
        assert_eq!((l.vcpus, l.max_vcpus), (2, 4));
        assert_eq!((l.memory_mib, l.max_memory_mib), (256, 512));
        assert_eq!(l.disks.len(), 1);
        assert_eq!(l.disks[0].target, "vda");
        assert_eq!(l.disks[0].path, PathBuf::from("/p/a.qcow2"));
        assert_eq!(l.nics.len(), 1);
        assert_eq!(l.nics[0].tap.as_deref(), Some("vnet7"));
        assert_eq!(l.nics[0].bridge.as_deref(), Some("br-vms"));
        assert_eq!(l.free_disk_target(), "vdb");
    }

    #[test]
    fn a_fixed_size_domain_has_no_headroom() {
        let l = LiveDomain::from_xml(
            "<domain><memory unit='MiB'>128</memory><vcpu placement='static'>1</vcpu></domain>",
        )
        .unwrap();
        assert_eq!(
            (l.vcpus, l.max_vcpus, l.memory_mib, l.max_memory_mib),
            (1, 1, 128, 128)
        );
    }
}
