//! [`VmGroup`]: VMs the scheduler keeps together (affinity) or apart (anti-affinity).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{validate_labels, Metadata, NewMetadata, ValidationError};

/// A group of VMs placed together or apart. A VM joins by naming the group in
/// `spec.placement.group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmGroup {
    /// Name, uid, version, labels.
    pub metadata: Metadata,
    /// The placement rule.
    pub spec: VmGroupSpec,
    /// Who is in the group.
    #[serde(default)]
    pub status: VmGroupStatus,
}

/// A group's placement rule. It applies when a member is placed (created, restarted by HA,
/// evacuated); changing it does not move running VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmGroupSpec {
    /// Together or apart.
    pub policy: GroupPolicy,
    /// Hard: placement fails rather than break the rule. Soft: the rule is a preference.
    pub strength: GroupStrength,
}

/// Together or apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GroupPolicy {
    /// Members run on the same node.
    Affinity,
    /// Members run on different nodes.
    AntiAffinity,
}

/// Whether a group's rule may be broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupStrength {
    /// Never broken: a member that cannot be placed by the rule is not placed.
    Hard,
    /// A preference: broken when there is no other way to place a member.
    Soft,
}

/// Who is in a group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmGroupStatus {
    /// Names of the VMs that name this group, sorted.
    #[serde(default)]
    pub members: Vec<String>,
}

/// `POST /api/v1/vm-groups`: a new group. Server-owned fields cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmGroupCreate {
    /// Name and labels.
    pub metadata: NewMetadata,
    /// The placement rule.
    pub spec: VmGroupSpec,
}

impl VmGroupCreate {
    /// All checks; paths are absolute in the body.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.metadata.validate().map_err(|e| e.within("metadata"))
    }
}

/// `PATCH /api/v1/vm-groups/{name}`. Nothing is optional, so there is no clear list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmGroupUpdate {
    /// When given, the update only applies if the stored version still equals it; else 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Replaces all labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Together or apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<GroupPolicy>,
    /// Hard or soft.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<GroupStrength>,
}

impl VmGroupUpdate {
    /// The group with this update applied (status untouched), or why it cannot be.
    pub fn apply(&self, group: &VmGroup) -> Result<VmGroup, ValidationError> {
        let mut out = group.clone();
        if let Some(labels) = &self.labels {
            validate_labels("labels", labels)?;
            out.metadata.labels = labels.clone();
        }
        if let Some(p) = self.policy {
            out.spec.policy = p;
        }
        if let Some(s) = self.strength {
            out.spec.strength = s;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let create: VmGroupCreate = serde_json::from_str(
            r#"{"metadata":{"name":"web"},"spec":{"policy":"anti-affinity","strength":"hard"}}"#,
        )
        .unwrap();
        create.validate().unwrap();
        assert_eq!(create.spec.policy, GroupPolicy::AntiAffinity);
        let json = serde_json::to_string(&create).unwrap();
        assert_eq!(
            serde_json::from_str::<VmGroupCreate>(&json).unwrap(),
            create
        );
        for bad in [
            r#"{"metadata":{"name":"web"},"spec":{"policy":"anti_affinity","strength":"hard"}}"#,
            r#"{"metadata":{"name":"web"},"spec":{"policy":"affinity"}}"#,
            r#"{"metadata":{"name":"web"},"spec":{"policy":"affinity","strength":"medium"}}"#,
            r#"{"metadata":{"name":"Web"},"spec":{"policy":"affinity","strength":"hard"}}"#,
        ] {
            assert!(serde_json::from_str::<VmGroupCreate>(bad).is_err(), "{bad}");
        }
        let group = VmGroup {
            metadata: create.metadata.clone().into_metadata(),
            spec: create.spec,
            status: VmGroupStatus {
                members: vec!["a".into()],
            },
        };
        let soft: VmGroupUpdate = serde_json::from_str(r#"{"strength":"soft"}"#).unwrap();
        let out = soft.apply(&group).unwrap();
        assert_eq!(out.spec.strength, GroupStrength::Soft);
        assert_eq!(out.status.members, vec!["a".to_string()]);
    }
}
