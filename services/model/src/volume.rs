//! [`Volume`]: a virtual disk in a pool.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::update::{check_clear, clears};
use crate::{validate_labels, Bytes, Metadata, Name, NewMetadata, ValidationError};

/// A virtual disk stored in a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    /// Name, uid, version, labels.
    pub metadata: Metadata,
    /// What the disk should be.
    pub spec: VolumeSpec,
    /// What it is.
    #[serde(default)]
    pub status: VolumeStatus,
}

/// What a volume should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// The pool that holds it (and so the node it lives on).
    pub pool: Name,
    /// Size the guest sees. It can grow, never shrink.
    pub size: Bytes,
    /// On-disk format; qcow2 (thin, can have a backing image) by default.
    #[serde(default)]
    pub format: VolumeFormat,
    /// An image the volume starts as: a thin qcow2 overlay on the image (qcow2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_image: Option<Name>,
    /// I/O limits; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
    /// Another volume (in the same pool) this one starts as a full copy of; set by keeld
    /// when it clones a VM (its snapshots are not copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_of: Option<Name>,
}

/// A volume's on-disk format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeFormat {
    /// QEMU copy-on-write v2: thin, with a backing image, snapshots.
    #[default]
    Qcow2,
    /// Raw bytes (fully allocated when written).
    Raw,
}

/// Per-disk I/O limits (libvirt `<iotune>`). Each limit is optional; absent means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Qos {
    /// Read operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_iops: Option<u64>,
    /// Write operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_iops: Option<u64>,
    /// Read bandwidth, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_bytes_sec: Option<u64>,
    /// Write bandwidth, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_bytes_sec: Option<u64>,
}

impl Qos {
    /// Largest limit QEMU accepts (its `THROTTLE_VALUE_MAX`).
    pub const MAX: u64 = 1_000_000_000_000_000;

    /// Each limit is 1 to [`Qos::MAX`] (0 would mean "unlimited" to QEMU; leave it out
    /// instead). Paths are relative (`read_iops`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        for (name, value) in [
            ("read_iops", self.read_iops),
            ("write_iops", self.write_iops),
            ("read_bytes_sec", self.read_bytes_sec),
            ("write_bytes_sec", self.write_bytes_sec),
        ] {
            if let Some(v) = value {
                if !(1..=Self::MAX).contains(&v) {
                    return Err(ValidationError::new(
                        name,
                        format!(
                            "{v} is out of range; use 1 to {} or leave the limit out for none",
                            Self::MAX
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Where a volume is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumePhase {
    /// Waiting for its node to create it (and for its backing image to reach that node).
    #[default]
    Pending,
    /// Being created or resized.
    Creating,
    /// Exists; usable.
    Ready,
    /// Its node could not create or resize it; `message` says why.
    Failed,
}

/// What a volume is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeStatus {
    /// Where the volume is in its life.
    #[serde(default)]
    pub phase: VolumePhase,
    /// The file on its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The node it lives on (its pool's node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Bytes it takes on disk (less than the size for a thin volume).
    #[serde(default)]
    pub allocation_bytes: u64,
    /// Size it has now (trails `spec.size` while a resize is pending).
    #[serde(default)]
    pub size_bytes: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The VM that created this volume for one of its disks and deletes it with itself
    /// (unless it is deleted with `keep_disks=true`, which clears this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The VM whose disk this volume is (its owner, or a VM attaching it as a `volume` disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_to: Option<String>,
}

impl VolumeSpec {
    /// Smallest volume.
    pub const MIN_SIZE: Bytes = Bytes::from_mib(1);
    /// Largest volume (64 TiB).
    pub const MAX_SIZE: Bytes = Bytes::new(64 * Bytes::TIB);

    /// Cross-field checks; paths are relative to the spec (`size`, `qos.read_iops`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_disk_size("size", self.size)?;
        if self.backing_image.is_some() && self.format == VolumeFormat::Raw {
            return Err(ValidationError::new(
                "backing_image",
                "a raw volume cannot have a backing image; use format qcow2 or leave backing_image out",
            ));
        }
        if let Some(qos) = &self.qos {
            qos.validate().map_err(|e| e.within("qos"))?;
        }
        if self.clone_of.is_some() && self.backing_image.is_some() {
            return Err(ValidationError::new(
                "clone_of",
                "a clone takes its backing image from the volume it copies; leave backing_image out",
            ));
        }
        Ok(())
    }
}

/// The name of node `node`'s local `dir` pool: `<node>-local` (shortened with a hash when
/// that is longer than a [`Name`] may be, like [`crate::owned_volume_name`]).
pub fn local_pool_name(node: &Name) -> Name {
    crate::owned_volume_name(node, &Name::new("local").unwrap_or_else(|_| node.clone()))
}

/// `POST /api/v1/volumes/{name}/resize`: grow a volume (never shrink).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeResize {
    /// The new size, at least the current one (`"4GiB"` or bytes).
    pub size: Bytes,
}

impl VolumeResize {
    /// Checks the new size against the volume's current one; the path is `size`.
    pub fn check(&self, current: Bytes) -> Result<(), ValidationError> {
        check_disk_size("size", self.size)?;
        if self.size < current {
            return Err(ValidationError::new(
                "size",
                format!(
                    "volumes only grow: {} is smaller than the current {current}",
                    self.size
                ),
            ));
        }
        Ok(())
    }
}

/// A virtual disk size: 1 MiB to 64 TiB, a whole number of KiB (QEMU sizes disks in
/// 512-byte sectors; whole KiB keeps every format happy).
pub(crate) fn check_disk_size(field: &str, size: Bytes) -> Result<(), ValidationError> {
    if size < VolumeSpec::MIN_SIZE || size > VolumeSpec::MAX_SIZE {
        return Err(ValidationError::new(
            field,
            format!(
                "a disk of {size} is out of range; use {} to {}",
                VolumeSpec::MIN_SIZE,
                VolumeSpec::MAX_SIZE
            ),
        ));
    }
    if !size.is_multiple_of(Bytes::KIB) {
        return Err(ValidationError::new(
            field,
            format!(
                "{} bytes is not a whole number of KiB; round it (e.g. to MiB)",
                size.get()
            ),
        ));
    }
    Ok(())
}

/// `POST /api/v1/volumes`: a new volume. Server-owned fields cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreate {
    /// Name and labels.
    pub metadata: NewMetadata,
    /// The volume.
    pub spec: VolumeSpec,
}

impl VolumeCreate {
    /// All checks; paths are absolute in the body (`spec.size`). `clone_of` is keeld's.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.metadata.validate().map_err(|e| e.within("metadata"))?;
        if self.spec.clone_of.is_some() {
            return Err(ValidationError::new(
                "spec.clone_of",
                "volumes are copied by cloning their VM (POST /api/v1/vms/{name}/clone); leave clone_of out",
            ));
        }
        self.spec.validate().map_err(|e| e.within("spec"))
    }
}

/// `PATCH /api/v1/volumes/{name}`: grow it, change its limits, relabel it. The pool, format
/// and backing image are fixed. `clear: ["qos"]` removes all limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeUpdate {
    /// When given, the update only applies if the stored version still equals it; else 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Replaces all labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// New size; must not be smaller than the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Bytes>,
    /// Replaces the I/O limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
    /// Optional fields to remove: `qos`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clear: Vec<String>,
}

impl VolumeUpdate {
    /// The volume with this update applied (status untouched), or why it cannot be. Paths
    /// are those of the update body (`size`, `clear[0]`).
    pub fn apply(&self, volume: &Volume) -> Result<Volume, ValidationError> {
        check_clear(&self.clear, &[("qos", self.qos.is_some())])?;
        let mut out = volume.clone();
        if let Some(labels) = &self.labels {
            validate_labels("labels", labels)?;
            out.metadata.labels = labels.clone();
        }
        if let Some(size) = self.size {
            if size < volume.spec.size {
                return Err(ValidationError::new(
                    "size",
                    format!(
                        "volumes only grow: {size} is smaller than the current {}",
                        volume.spec.size
                    ),
                ));
            }
            out.spec.size = size;
        }
        if let Some(qos) = &self.qos {
            out.spec.qos = Some(qos.clone());
        }
        if clears(&self.clear, "qos") {
            out.spec.qos = None;
        }
        out.spec.validate()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume() -> Volume {
        Volume {
            metadata: Metadata { name: "data".into(), ..Metadata::default() },
            spec: serde_json::from_str(r#"{"pool":"local","size":"10GiB","backing_image":"debian","qos":{"read_iops":100}}"#).unwrap(),
            status: VolumeStatus::default(),
        }
    }

    #[test]
    fn create_round_trip() {
        let create: VolumeCreate = serde_json::from_str(
            r#"{"metadata":{"name":"data"},"spec":{"pool":"local","size":"2GiB"}}"#,
        )
        .unwrap();
        create.validate().unwrap();
        assert_eq!(create.spec.format, VolumeFormat::Qcow2);
        let json = serde_json::to_value(&create).unwrap();
        assert_eq!(json["spec"]["size"], 2u64 << 30);
        assert_eq!(
            serde_json::from_value::<VolumeCreate>(json).unwrap(),
            create
        );
        let v = volume();
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(serde_json::from_value::<Volume>(json).unwrap(), v);
    }

    #[test]
    fn refuses_bad_specs_with_paths() {
        let mut spec = volume().spec;
        spec.size = Bytes::new(0);
        assert_eq!(spec.validate().unwrap_err().field, "size");
        spec.size = Bytes::new(65 * Bytes::TIB);
        assert!(spec
            .validate()
            .unwrap_err()
            .message
            .contains("out of range"));
        spec.size = Bytes::new(Bytes::MIB * 2 + 3);
        assert!(spec
            .validate()
            .unwrap_err()
            .message
            .contains("whole number of KiB"));
        spec.size = Bytes::from_gib(1);
        spec.format = VolumeFormat::Raw;
        assert_eq!(spec.validate().unwrap_err().field, "backing_image");
        spec.format = VolumeFormat::Qcow2;
        spec.qos = Some(Qos {
            write_bytes_sec: Some(0),
            ..Qos::default()
        });
        assert_eq!(spec.validate().unwrap_err().field, "qos.write_bytes_sec");
        assert!(serde_json::from_str::<Qos>(r#"{"total_iops":5}"#).is_err());
        assert!(serde_json::from_str::<VolumeSpec>(r#"{"pool":"local","size":"lots"}"#).is_err());
    }

    #[test]
    fn resize_grows_only() {
        let r: VolumeResize = serde_json::from_str(r#"{"size":"4GiB"}"#).unwrap();
        r.check(Bytes::from_gib(1)).unwrap();
        r.check(Bytes::from_gib(4)).unwrap();
        let err = r.check(Bytes::from_gib(8)).unwrap_err();
        assert_eq!(err.field, "size");
        assert!(err.message.contains("only grow"), "{}", err.message);
        let zero = VolumeResize {
            size: Bytes::new(0),
        };
        assert!(zero
            .check(Bytes::new(0))
            .unwrap_err()
            .message
            .contains("out of range"));
        assert!(serde_json::from_str::<VolumeResize>(r#"{"size":"-1GiB"}"#).is_err());
        assert!(serde_json::from_str::<VolumeResize>(r#"{"size":"1GiB","x":1}"#).is_err());
    }

    #[test]
    fn clone_of_is_keelds() {
        let create: VolumeCreate = serde_json::from_str(
            r#"{"metadata":{"name":"data"},"spec":{"pool":"local","size":"2GiB","clone_of":"other"}}"#,
        )
        .unwrap();
        assert_eq!(create.validate().unwrap_err().field, "spec.clone_of");
    }

    #[test]
    fn update_grows_only_and_clears_qos() {
        let v = volume();
        let grow: VolumeUpdate = serde_json::from_str(r#"{"size":"20GiB"}"#).unwrap();
        assert_eq!(grow.apply(&v).unwrap().spec.size, Bytes::from_gib(20));
        let shrink: VolumeUpdate = serde_json::from_str(r#"{"size":"1GiB"}"#).unwrap();
        let err = shrink.apply(&v).unwrap_err();
        assert_eq!(err.field, "size");
        assert!(err.message.contains("only grow"), "{}", err.message);
        let clear: VolumeUpdate = serde_json::from_str(r#"{"clear":["qos"]}"#).unwrap();
        assert_eq!(clear.apply(&v).unwrap().spec.qos, None);
        let both: VolumeUpdate = serde_json::from_str(r#"{"qos":{},"clear":["qos"]}"#).unwrap();
        assert!(both
            .apply(&v)
            .unwrap_err()
            .message
            .contains("both set and cleared"));
        let unknown: VolumeUpdate = serde_json::from_str(r#"{"clear":["pool"]}"#).unwrap();
        let err = unknown.apply(&v).unwrap_err();
        assert_eq!(err.field, "clear[0]");
        assert!(err.message.contains("clearable fields are: qos"));
        assert!(serde_json::from_str::<VolumeUpdate>(r#"{"pool":"other"}"#).is_err());
    }
}
