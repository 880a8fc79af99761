//! [`Disk`]: a file-backed virtio disk, with optional I/O limits.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ValidationError;

/// A disk image file attached on the virtio bus. Targets are assigned by position: the first
/// disk is `vda`, the second `vdb`, and so on; with [`Boot::Disk`](super::Boot::Disk) the
/// first disk is the boot disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Absolute path of the image file on the host.
    pub path: PathBuf,
    /// Image format.
    pub format: DiskFormat,
    /// Limits applied by QEMU's block throttling (libvirt `<iotune>`); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iotune: Option<IoTune>,
}

/// On-disk format of an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// QEMU copy-on-write v2 (thin, backing files, snapshots).
    Qcow2,
    /// Raw bytes.
    Raw,
}

impl DiskFormat {
    /// The name libvirt and QEMU use.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// Per-disk QoS. Each limit is optional; a `total_*` limit cannot be combined with the
/// `read_*`/`write_*` limits of the same unit (QEMU refuses that).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoTune {
    /// Combined read and write bandwidth, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes_sec: Option<u64>,
    /// Read bandwidth, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_bytes_sec: Option<u64>,
    /// Write bandwidth, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_bytes_sec: Option<u64>,
    /// Combined read and write operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_iops_sec: Option<u64>,
    /// Read operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_iops_sec: Option<u64>,
    /// Write operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_iops_sec: Option<u64>,
}

impl IoTune {
    /// Largest limit QEMU accepts (its `THROTTLE_VALUE_MAX`).
    pub const MAX: u64 = 1_000_000_000_000_000;

    /// Checks ranges and combinations; `field` is this value's path, such as `disks[0].iotune`.
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        for (name, value) in self.limits() {
            if let Some(v) = value {
                if !(1..=Self::MAX).contains(&v) {
                    return Err(ValidationError::OutOfRange {
                        field: format!("{field}.{name}"),
                        value: v,
                        min: 1,
                        max: Self::MAX,
                    });
                }
            }
        }
        for (total, total_v, read_v, write_v, read, write) in [
            (
                "total_bytes_sec",
                self.total_bytes_sec,
                self.read_bytes_sec,
                self.write_bytes_sec,
                "read_bytes_sec",
                "write_bytes_sec",
            ),
            (
                "total_iops_sec",
                self.total_iops_sec,
                self.read_iops_sec,
                self.write_iops_sec,
                "read_iops_sec",
                "write_iops_sec",
            ),
        ] {
            if total_v.is_some() && (read_v.is_some() || write_v.is_some()) {
                let other = if read_v.is_some() { read } else { write };
                return Err(ValidationError::Conflict {
                    field: format!("{field}.{total}"),
                    other: format!("{field}.{other}"),
                    reason: "set either the total limit or the read/write limits",
                });
            }
        }
        Ok(())
    }

    /// The limits in libvirt's element order, with their element names.
    pub(crate) fn limits(&self) -> [(&'static str, Option<u64>); 6] {
        [
            ("total_bytes_sec", self.total_bytes_sec),
            ("read_bytes_sec", self.read_bytes_sec),
            ("write_bytes_sec", self.write_bytes_sec),
            ("total_iops_sec", self.total_iops_sec),
            ("read_iops_sec", self.read_iops_sec),
            ("write_iops_sec", self.write_iops_sec),
        ]
    }
}
