//! [`DomainSpec`]: everything Keel says about a libvirt domain, as typed data.
//!
//! The spec is what Keel controls; the XML libvirt gets is rendered from it by
//! [`DomainSpec::to_xml`] and nothing else. Fields that every Keel domain has the same way
//! (machine type `pc`, ACPI, a pty serial console, UTC clock, a virtio balloon) are not
//! options: fewer paths, each tested.

mod cpu;
mod disk;
mod hotplug;
mod mac;
mod name;
mod nic;
mod validation;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use cpu::{CpuMode, CpuModel};
pub use disk::{Disk, DiskFormat, IoTune};
pub use hotplug::Hotplug;
pub use mac::MacAddr;
pub use name::DomainName;
pub use nic::{BridgeName, Nic};
pub use validation::ValidationError;

/// A domain to define: identity, size, CPU, boot, devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSpec {
    /// libvirt domain name.
    pub name: DomainName,
    /// libvirt domain UUID (also the guest's SMBIOS system UUID).
    pub uuid: Uuid,
    /// The uid of the Keel `Vm` resource this domain belongs to, kept in the domain's
    /// `<metadata>` so that Keel can tell its domains from anyone else's.
    pub keel_uid: Uuid,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Number of virtual CPUs.
    pub vcpus: u32,
    /// Hardware-assisted (`kvm`) or emulated (`qemu`, TCG).
    pub domain_type: DomainType,
    /// The CPU the guest sees.
    pub cpu: CpuMode,
    /// Firmware: BIOS (SeaBIOS) or UEFI (OVMF with a per-domain variable store).
    #[serde(default)]
    pub firmware: Firmware,
    /// What the guest boots.
    pub boot: Boot,
    /// Disks, in target order (`vda`, `vdb`, ...).
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Read-only CD-ROMs on the SATA bus, in target order (`sda`, `sdb`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdroms: Vec<Cdrom>,
    /// NICs, in PCI order.
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// A VNC display, local only; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc: Option<Vnc>,
    /// Add the virtio-serial channel qemu-guest-agent talks on.
    #[serde(default)]
    pub guest_agent: bool,
    /// A file on the host that keeps everything the guest writes to its serial console
    /// (appended, rotated by virtlogd); none when absent. The path is the hypervisor host's:
    /// after a live migration the destination writes to the same path on its own host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_log: Option<PathBuf>,
    /// Room to hot-add vCPUs and memory while the domain runs; none: fixed size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug: Option<Hotplug>,
}

/// How the domain's CPU is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    /// KVM: hardware virtualisation.
    Kvm,
    /// QEMU's TCG emulator: slow, but works everywhere, including where `/dev/kvm` is broken.
    Qemu,
}

impl DomainType {
    /// libvirt's name for it (`<domain type='...'>`).
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
        }
    }
}

/// Guest firmware.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS.
    #[default]
    Bios,
    /// UEFI (OVMF): the firmware code as read-only pflash, and a variable store (NVRAM) of
    /// the domain's own, which libvirt copies from `vars_template` when it does not exist.
    Uefi {
        /// Absolute path of the firmware code (`OVMF_CODE*.fd`).
        loader: PathBuf,
        /// Absolute path of the pristine variable store (`OVMF_VARS*.fd`).
        vars_template: PathBuf,
        /// Absolute path of this domain's variable store.
        nvram: PathBuf,
    },
}

/// A device the firmware may boot from, by its index in the spec's lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    /// `disks[i]`.
    Disk(usize),
    /// `cdroms[i]`.
    Cdrom(usize),
    /// `nics[i]` (network boot).
    Nic(usize),
}

/// What the guest boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase", deny_unknown_fields)]
pub enum Boot {
    /// Direct kernel boot: QEMU loads the kernel and initrd from host files.
    Kernel {
        /// Absolute path of the kernel image.
        kernel: PathBuf,
        /// Absolute path of the initrd, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd: Option<PathBuf>,
        /// Kernel command line.
        #[serde(default)]
        cmdline: String,
    },
    /// The firmware boots the first disk.
    Disk,
    /// The firmware tries these devices in this order (`<boot order='N'/>` on each).
    Order {
        /// Devices, first to try first.
        devices: Vec<BootDevice>,
    },
}

/// A read-only CD-ROM backed by an ISO 9660 image file on the host (an installer ISO, a
/// cloud-init seed). Targets are assigned by position: `sda`, `sdb`, ... on the SATA bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cdrom {
    /// Absolute path of the image file on the host.
    pub path: PathBuf,
}

/// Where the VNC server listens. Never on a network address: consoles reach the network only
/// through keeld's authenticated proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "listen", rename_all = "lowercase", deny_unknown_fields)]
pub enum Vnc {
    /// A unix socket at `path` (preferred: file permissions guard it).
    Socket {
        /// Absolute path of the socket.
        path: PathBuf,
    },
    /// TCP on 127.0.0.1 with a port libvirt picks (5900 and up).
    Loopback,
}

impl DomainSpec {
    /// Least memory accepted, MiB.
    pub const MIN_MEMORY_MIB: u64 = 16;
    /// Most memory accepted, MiB (4 TiB).
    pub const MAX_MEMORY_MIB: u64 = 4 * 1024 * 1024;
    /// Most vCPUs accepted (the `pc` machine type's limit).
    pub const MAX_VCPUS: u32 = 255;
    /// Most disks (each takes a slot on the one PCI bus).
    pub const MAX_DISKS: usize = 16;
    /// Most NICs (each takes a slot on the one PCI bus).
    pub const MAX_NICS: usize = 8;
    /// Most CD-ROMs (ports of the one SATA controller).
    pub const MAX_CDROMS: usize = 6;
    /// Longest kernel command line, bytes (x86 `COMMAND_LINE_SIZE` less the NUL).
    pub const MAX_CMDLINE: usize = 2047;
    /// Longest unix socket path, bytes (`sun_path` less the NUL).
    pub const MAX_SOCKET_PATH: usize = 107;

    /// Checks everything a single field's type cannot: ranges, combinations, paths, and
    /// uniqueness within lists.
    pub fn validate(&self) -> Result<(), ValidationError> {
        range(
            "memory_mib",
            self.memory_mib,
            Self::MIN_MEMORY_MIB,
            Self::MAX_MEMORY_MIB,
        )?;
        range("vcpus", self.vcpus.into(), 1, Self::MAX_VCPUS.into())?;
        if let Some(h) = &self.hotplug {
            h.validate(self.vcpus, self.memory_mib)?;
        }
        if self.cpu == CpuMode::HostPassthrough && self.domain_type != DomainType::Kvm {
            return Err(ValidationError::Conflict {
                field: "cpu.mode".into(),
                other: "domain_type".into(),
                reason: "host-passthrough needs KVM; under TCG name a model such as qemu64",
            });
        }
        if let Some(log) = &self.serial_log {
            host_path("serial_log", log)?;
        }
        match &self.boot {
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                host_path("boot.kernel", kernel)?;
                if let Some(initrd) = initrd {
                    host_path("boot.initrd", initrd)?;
                }
                if cmdline.len() > Self::MAX_CMDLINE {
                    return Err(ValidationError::OutOfRange {
                        field: "boot.cmdline".into(),
                        value: cmdline.len() as u64,
                        min: 0,
                        max: Self::MAX_CMDLINE as u64,
                    });
                }
                if cmdline.chars().any(char::is_control) {
                    return Err(ValidationError::Malformed {
                        field: "boot.cmdline".into(),
                        value: cmdline.clone(),
                        expected: "one line without control characters",
                    });
                }
            }
            Boot::Disk => {
                if self.disks.is_empty() {
                    return Err(ValidationError::Conflict {
                        field: "boot.from".into(),
                        other: "disks".into(),
                        reason: "booting from disk needs at least one disk",
                    });
                }
            }
            Boot::Order { devices } => self.validate_boot_order(devices)?,
        }
        if let Firmware::Uefi {
            loader,
            vars_template,
            nvram,
        } = &self.firmware
        {
            host_path("firmware.loader", loader)?;
            host_path("firmware.vars_template", vars_template)?;
            host_path("firmware.nvram", nvram)?;
        }
        if self.cdroms.len() > Self::MAX_CDROMS {
            return Err(ValidationError::TooMany {
                field: "cdroms".into(),
                count: self.cdroms.len(),
                max: Self::MAX_CDROMS,
            });
        }
        for (i, cdrom) in self.cdroms.iter().enumerate() {
            host_path(&format!("cdroms[{i}].path"), &cdrom.path)?;
        }
        if self.disks.len() > Self::MAX_DISKS {
            return Err(ValidationError::TooMany {
                field: "disks".into(),
                count: self.disks.len(),
                max: Self::MAX_DISKS,
            });
        }
        let mut paths = BTreeSet::new();
        for (i, disk) in self.disks.iter().enumerate() {
            let field = format!("disks[{i}].path");
            let path = host_path(&field, &disk.path)?;
            if !paths.insert(path) {
                return Err(ValidationError::Duplicate {
                    field,
                    value: path.into(),
                });
            }
            if let Some(iotune) = &disk.iotune {
                iotune.validate(&format!("disks[{i}].iotune"))?;
            }
        }
        if self.nics.len() > Self::MAX_NICS {
            return Err(ValidationError::TooMany {
                field: "nics".into(),
                count: self.nics.len(),
                max: Self::MAX_NICS,
            });
        }
        let mut macs = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for (i, nic) in self.nics.iter().enumerate() {
            if !macs.insert(nic.mac) {
                return Err(ValidationError::Duplicate {
                    field: format!("nics[{i}].mac"),
                    value: nic.mac.to_string(),
                });
            }
            if let Some(id) = nic.interface_id {
                if !ids.insert(id) {
                    return Err(ValidationError::Duplicate {
                        field: format!("nics[{i}].interface_id"),
                        value: id.to_string(),
                    });
                }
            }
        }
        if let Some(Vnc::Socket { path }) = &self.vnc {
            let p = host_path("vnc.path", path)?;
            if p.len() > Self::MAX_SOCKET_PATH {
                return Err(ValidationError::OutOfRange {
                    field: "vnc.path".into(),
                    value: p.len() as u64,
                    min: 2,
                    max: Self::MAX_SOCKET_PATH as u64,
                });
            }
        }
        Ok(())
    }

    /// A boot order names each device once, and only devices the spec has.
    fn validate_boot_order(&self, devices: &[BootDevice]) -> Result<(), ValidationError> {
        if devices.is_empty() {
            return Err(ValidationError::Conflict {
                field: "boot.devices".into(),
                other: "disks".into(),
                reason: "a boot order needs at least one device",
            });
        }
        let mut seen = BTreeSet::new();
        for (i, d) in devices.iter().enumerate() {
            let field = format!("boot.devices[{i}]");
            let (index, len, list) = match *d {
                BootDevice::Disk(n) => (n, self.disks.len(), "disks"),
                BootDevice::Cdrom(n) => (n, self.cdroms.len(), "cdroms"),
                BootDevice::Nic(n) => (n, self.nics.len(), "nics"),
            };
            if index >= len {
                return Err(ValidationError::Conflict {
                    field,
                    other: list.into(),
                    reason: "the boot order names a device the spec does not have",
                });
            }
            if !seen.insert(*d) {
                return Err(ValidationError::Duplicate {
                    field,
                    value: format!("{d:?}"),
                });
            }
        }
        Ok(())
    }

    /// The libvirt target device of CD-ROM `index`: `sda`, `sdb`, ...
    pub fn cdrom_target(index: usize) -> String {
        let letter = b"abcdefghijklmnopqrstuvwxyz"
            .get(index)
            .copied()
            .unwrap_or(b'z');
        format!("sd{}", char::from(letter))
    }

    /// Validates, then renders the libvirt domain XML.
    pub fn to_xml(&self) -> Result<String, crate::XmlError> {
        self.validate()?;
        crate::xml::render(self)
    }

    /// The libvirt target device of disk `index`: `vda`, `vdb`, ... (valid below
    /// [`MAX_DISKS`](Self::MAX_DISKS)).
    pub fn disk_target(index: usize) -> String {
        let letter = b"abcdefghijklmnopqrstuvwxyz"
            .get(index)
            .copied()
            .unwrap_or(b'z');
        format!("vd{}", char::from(letter))
    }
}

fn range(field: &str, value: u64, min: u64, max: u64) -> Result<(), ValidationError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ValidationError::OutOfRange {
            field: field.into(),
            value,
            min,
            max,
        })
    }
}

/// An absolute, UTF-8 host path without control characters, as a string.
fn host_path<'p>(field: &str, path: &'p Path) -> Result<&'p str, ValidationError> {
    let malformed = || ValidationError::Malformed {
        field: field.into(),
        value: path.to_string_lossy().into_owned(),
        expected: "an absolute UTF-8 path without control characters",
    };
    let s = path.to_str().ok_or_else(malformed)?;
    if !path.is_absolute() || s.chars().any(char::is_control) {
        return Err(malformed());
    }
    Ok(s)
}

#[cfg(test)]
mod tests;
