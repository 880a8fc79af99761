use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What every resource carries besides its spec and status. The store owns `uid`, `version`
/// and `created`: clients send `version` back to compare-and-set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Metadata {
    /// The resource's name, unique within its kind.
    pub name: String,
    /// Unique id assigned at creation; a re-created resource gets a new one.
    #[serde(default)]
    pub uid: String,
    /// Bumped by every write; send it back to update (compare-and-set).
    #[serde(default)]
    pub version: u64,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Creation time, RFC 3339.
    #[serde(default)]
    pub created: String,
    /// Set when deletion was requested; the resource goes once its owner has cleaned up
    /// (e.g. a VM's node has destroyed the domain and removed its disks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_requested: Option<String>,
}
