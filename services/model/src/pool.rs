//! [`Pool`]: a place on a node where volumes and images are stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::image::check_host_path;
use crate::{validate_labels, Metadata, Name, NewMetadata, ValidationError};

/// A storage pool on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pool {
    /// Name, uid, version, labels.
    pub metadata: Metadata,
    /// Where the pool is.
    pub spec: PoolSpec,
    /// Space, as the node last reported it.
    #[serde(default)]
    pub status: PoolStatus,
}

/// Where a pool is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// The node that holds the pool (local storage is reachable from that node only).
    pub node: Name,
    /// The kind of storage.
    pub kind: PoolKind,
}

/// The kind of storage behind a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum PoolKind {
    /// A directory on the node's file system; volumes are files in it.
    Dir {
        /// Absolute path of the directory.
        path: String,
    },
}

/// Whether a pool is usable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolPhase {
    /// Its node has not reported on it yet.
    #[default]
    Pending,
    /// Usable.
    Ready,
    /// Its node cannot use it; `message` says why.
    Failed,
}

/// Space in a pool, as its node last reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolStatus {
    /// Whether the pool is usable.
    #[serde(default)]
    pub phase: PoolPhase,
    /// Size of the file system holding the pool.
    #[serde(default)]
    pub capacity_bytes: u64,
    /// Bytes the pool's volumes and images take on disk.
    #[serde(default)]
    pub allocation_bytes: u64,
    /// Bytes free for new data.
    #[serde(default)]
    pub available_bytes: u64,
    /// Why the pool is not usable.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl PoolSpec {
    /// Cross-field checks; paths are relative to the spec (`kind.path`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        match &self.kind {
            PoolKind::Dir { path } => {
                check_host_path("kind.path", path)?;
                if path.trim_end_matches('/').is_empty() {
                    return Err(ValidationError::new(
                        "kind.path",
                        "the root directory cannot be a pool; use a directory such as /var/lib/keel/pools/default",
                    ));
                }
                Ok(())
            }
        }
    }
}

/// `POST /api/v1/pools`: a new pool. Server-owned fields cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolCreate {
    /// Name and labels.
    pub metadata: NewMetadata,
    /// The pool.
    pub spec: PoolSpec,
}

impl PoolCreate {
    /// All checks; paths are absolute in the body (`spec.kind.path`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.metadata.validate().map_err(|e| e.within("metadata"))?;
        self.spec.validate().map_err(|e| e.within("spec"))
    }
}

/// `PATCH /api/v1/pools/{name}`: only labels change; a pool's node and path are fixed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolUpdate {
    /// When given, the update only applies if the stored version still equals it; else 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Replaces all labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

impl PoolUpdate {
    /// The pool with this update applied (status untouched), or why it cannot be.
    pub fn apply(&self, pool: &Pool) -> Result<Pool, ValidationError> {
        let mut out = pool.clone();
        if let Some(labels) = &self.labels {
            validate_labels("labels", labels)?;
            out.metadata.labels = labels.clone();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_and_validate() {
        let create: PoolCreate = serde_json::from_str(
            r#"{"metadata":{"name":"local"},"spec":{"node":"node1","kind":{"type":"dir","path":"/var/lib/keel/pools/local"}}}"#,
        )
        .unwrap();
        create.validate().unwrap();
        let json = serde_json::to_string(&create).unwrap();
        assert_eq!(serde_json::from_str::<PoolCreate>(&json).unwrap(), create);

        for (path, why) in [
            ("pools", "absolute"),
            ("/", "root directory"),
            ("/a/../b", "'..'"),
        ] {
            let mut bad = create.clone();
            bad.spec.kind = PoolKind::Dir { path: path.into() };
            let err = bad.validate().unwrap_err();
            assert_eq!(err.field, "spec.kind.path");
            assert!(err.message.contains(why), "{path}: {}", err.message);
        }
        assert!(serde_json::from_str::<PoolSpec>(
            r#"{"node":"Node 1","kind":{"type":"dir","path":"/p"}}"#
        )
        .is_err());
        assert!(
            serde_json::from_str::<PoolSpec>(r#"{"node":"n","kind":{"type":"lvm","vg":"x"}}"#)
                .is_err()
        );
    }

    #[test]
    fn status_round_trip() {
        let pool = Pool {
            metadata: Metadata {
                name: "local".into(),
                ..Metadata::default()
            },
            spec: PoolSpec {
                node: Name::new("node1").unwrap(),
                kind: PoolKind::Dir { path: "/p".into() },
            },
            status: PoolStatus {
                phase: PoolPhase::Ready,
                capacity_bytes: 100,
                allocation_bytes: 40,
                available_bytes: 60,
                message: String::new(),
            },
        };
        let json = serde_json::to_value(&pool).unwrap();
        assert_eq!(json["spec"]["kind"]["type"], "dir");
        assert_eq!(serde_json::from_value::<Pool>(json).unwrap(), pool);
        let update = PoolUpdate {
            labels: Some([("tier".to_string(), "ssd".to_string())].into()),
            ..PoolUpdate::default()
        };
        assert_eq!(update.apply(&pool).unwrap().metadata.labels["tier"], "ssd");
    }
}
