//! [`VmUpdate`]: the body of `PATCH /api/v1/vms/{name}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::update::check_clear;
use crate::{
    validate_labels, Bytes, CloudInit, CpuModel, Firmware, HaSpec, Name, PowerState,
    ValidationError, Vm, VmDisk, VmNic,
};

/// `PATCH /api/v1/vms/{name}`: every field is optional and absent fields are left alone.
/// Lists (`disks`, `nics`, `boot_order`) are replaced whole, so attaching a disk is sending
/// the list with it added. Optional fields are removed by naming them in `clear`.
///
/// The model checks the merged spec; keeld decides which changes a running VM can take
/// (see [`crate::VmSpec::changed_fields`]) and refuses the others with 409.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmUpdate {
    /// When given, the update only applies if the stored version still equals it; else 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Replaces all labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Virtual CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Guest memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
    /// Firmware.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// The CPU the guest sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<CpuModel>,
    /// Replaces the disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<VmDisk>>,
    /// Replaces the NICs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nics: Option<Vec<VmNic>>,
    /// Replaces the cloud-init seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInit>,
    /// Replaces the boot order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<Vec<Name>>,
    /// Attaches this ISO (replacing any other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso: Option<Name>,
    /// Start again after the node restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    /// Start, stop, pause or resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<PowerState>,
    /// Placement changes; apply to the next placement (start, HA restart, evacuation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<VmPlacementUpdate>,
    /// HA policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaSpec>,
    /// Optional fields to remove; one of [`VmUpdate::CLEARABLE`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clear: Vec<String>,
}

/// `POST /api/v1/vms/{name}/rename`: a stopped VM's new name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmRename {
    /// The new name (DNS-safe, unused by any other VM).
    pub new_name: Name,
}

/// Placement changes within a [`VmUpdate`]; absent fields are left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmPlacementUpdate {
    /// Pin to this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Name>,
    /// Replaces the node selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Join this group (leaving any other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Name>,
}

impl VmUpdate {
    /// The fields `clear` may name.
    pub const CLEARABLE: [&'static str; 7] = [
        "firmware",
        "cloud_init",
        "boot_order",
        "iso",
        "placement.node",
        "placement.node_selector",
        "placement.group",
    ];

    /// The VM with this update applied (status untouched), checked as a whole, or why it
    /// cannot be. Paths are those of the update body (`cpus`, `disks[1].source.size`,
    /// `clear[0]`).
    pub fn apply(&self, vm: &Vm) -> Result<Vm, ValidationError> {
        let p = self.placement.as_ref();
        let set = [
            self.firmware.is_some(),
            self.cloud_init.is_some(),
            self.boot_order.is_some(),
            self.iso.is_some(),
            p.is_some_and(|p| p.node.is_some()),
            p.is_some_and(|p| p.node_selector.is_some()),
            p.is_some_and(|p| p.group.is_some()),
        ];
        let pairs: Vec<(&str, bool)> = Self::CLEARABLE.iter().copied().zip(set).collect();
        check_clear(&self.clear, &pairs)?;

        let mut out = vm.clone();
        if let Some(labels) = &self.labels {
            validate_labels("labels", labels)?;
            out.metadata.labels = labels.clone();
        }
        let spec = &mut out.spec;
        if let Some(v) = self.cpus {
            spec.cpus = v;
        }
        if let Some(v) = self.memory {
            spec.memory = v;
        }
        if let Some(v) = self.firmware {
            spec.firmware = Some(v);
        }
        if let Some(v) = &self.cpu_model {
            spec.cpu_model = v.clone();
        }
        if let Some(v) = &self.disks {
            spec.disks = v.clone();
        }
        if let Some(v) = &self.nics {
            spec.nics = v.clone();
        }
        if let Some(v) = &self.cloud_init {
            spec.cloud_init = Some(v.clone());
        }
        if let Some(v) = &self.boot_order {
            spec.boot_order = v.clone();
        }
        if let Some(v) = &self.iso {
            spec.iso = Some(v.clone());
        }
        if let Some(v) = self.autostart {
            spec.autostart = v;
        }
        if let Some(v) = self.power_state {
            spec.power_state = v;
        }
        if let Some(p) = p {
            if let Some(v) = &p.node {
                spec.placement.node = Some(v.clone());
            }
            if let Some(v) = &p.node_selector {
                spec.placement.node_selector = v.clone();
            }
            if let Some(v) = &p.group {
                spec.placement.group = Some(v.clone());
            }
        }
        if let Some(v) = self.ha {
            spec.ha = v;
        }
        for field in &self.clear {
            match field.as_str() {
                "firmware" => spec.firmware = None,
                "cloud_init" => spec.cloud_init = None,
                "boot_order" => spec.boot_order.clear(),
                "iso" => spec.iso = None,
                "placement.node" => spec.placement.node = None,
                "placement.node_selector" => spec.placement.node_selector.clear(),
                "placement.group" => spec.placement.group = None,
                _ => {}
            }
        }
        spec.validate()?;
        Ok(out)
    }
}
