use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One change, as streamed by `GET /api/v1/events?since=REV` (server-sent events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WatchEvent {
    /// Store revision of the change; pass it as `since` to resume after it.
    pub revision: u64,
    /// Resource kind, e.g. `settings`, `nodes`.
    pub kind: String,
    /// Resource name.
    pub name: String,
    /// What happened.
    pub op: WatchOp,
    /// The resource after the change (absent for deletes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<serde_json::Value>,
}

/// The kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WatchOp {
    /// Created.
    Create,
    /// Updated.
    Update,
    /// Deleted.
    Delete,
}
