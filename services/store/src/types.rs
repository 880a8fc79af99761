//! The data that crosses the store's boundary: what callers propose, what the state machine
//! answers, and what watchers see. Everything here is plain data (H16): no locks, no handles.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A cluster member's Raft id. Stable for the life of the node's data directory.
pub type NodeId = u64;

/// How to reach a member: what Raft stores in its membership config for every node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The node's name (its hostname in the cluster).
    pub name: String,
    /// `host:7443`, where the node answers node-to-node RPC (Raft included).
    pub peer: String,
    /// `https://host:8443`, where the node serves the API.
    pub api: String,
}

/// A resource as stored. `value` is the JSON the caller gave; the store owns `uid`, `version`,
/// `created` and `revision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The resource kind (`Node`, `Vm`, ...).
    pub kind: String,
    /// Unique within its kind.
    pub name: String,
    /// Set at creation, derived from the creating log entry (see the crate docs); a re-created
    /// resource gets a new one.
    pub uid: String,
    /// 1 at creation, +1 per update: the compare-and-set token.
    pub version: u64,
    /// Creation time, RFC 3339 UTC with milliseconds, from the leader clock carried in the
    /// creating log entry.
    pub created: String,
    /// The store revision of the last change to this record.
    pub revision: u64,
    /// The resource JSON as given by the caller.
    pub value: Value,
}

/// A write, as callers propose it. `Store::write` wraps it in a [`Proposal`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Create. Fails with `AlreadyExists`, unless `idempotency_key` is the key of the create that
    /// made `kind/name` (remembered for 24 h of leader time): then the first result is returned
    /// unchanged and nothing is written.
    Create {
        /// Resource kind.
        kind: String,
        /// Resource name.
        name: String,
        /// Resource JSON.
        value: Value,
        /// Makes retries of the same create safe.
        idempotency_key: Option<String>,
    },
    /// Upsert. `expected_version`: `None` = unconditional; `Some(0)` = must not exist;
    /// `Some(v)` = must currently be at version `v`.
    Put {
        /// Resource kind.
        kind: String,
        /// Resource name.
        name: String,
        /// Resource JSON.
        value: Value,
        /// Compare-and-set token, see above.
        expected_version: Option<u64>,
    },
    /// Delete. `expected_version` as for `Put`. Deleting a missing record is `NotFound`.
    Delete {
        /// Resource kind.
        kind: String,
        /// Resource name.
        name: String,
        /// Compare-and-set token, see `Put`.
        expected_version: Option<u64>,
    },
    /// Several requests applied atomically, in order: the first failure aborts them all.
    Batch(Vec<Request>),
}

/// What goes into the Raft log: the request plus the leader's wall clock when it was proposed.
///
/// Every replica applies these same bytes, so anything that must be equal on every replica and
/// is not in the request (the creation time, the idempotency-key expiry clock) comes from here,
/// never from the applying node's clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Milliseconds since the Unix epoch on the leader that proposed the entry.
    pub at_ms: u64,
    /// The write itself.
    pub request: Request,
}

/// The result of applying a [`Request`]. Applying is deterministic, so application-level
/// failures are values, identical on every replica, not errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// A `Create` or `Put` succeeded (or an idempotent `Create` was replayed); the record as
    /// written.
    Written(Record),
    /// A `Delete` succeeded.
    Deleted {
        /// Resource kind.
        kind: String,
        /// Resource name.
        name: String,
        /// The store revision of the deletion.
        revision: u64,
    },
    /// A `Batch` succeeded: one response per sub-request, in order. Raft's own entries (blank
    /// and membership entries) also answer `Batch(vec![])`; `Store::write` never returns those.
    Batch(Vec<Response>),
    /// The request (or, for a batch, its first failing sub-request) was refused; nothing was
    /// written.
    Failed(ApplyFailure),
}

/// Why a request was refused by the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyFailure {
    /// The record does not exist.
    #[error("{kind}/{name} does not exist")]
    NotFound {
        /// Resource kind.
        kind: String,
        /// Resource name.
        name: String,
    },
    /// A create found the record already there.
    #[error("{kind}/{name} already exists")]
    AlreadyExists {
        /// Resource kind.
        kind: String,
        /// Resource name.
        name: String,
    },
    /// Compare-and-set failed.
    #[error("{kind}/{name} is at version {actual}, not {expected}")]
    VersionConflict {
        /// Resource kind.
        kind: String,
        /// Resource name.
        name: String,
        /// The version the caller expected (0 = absent).
        expected: u64,
        /// The version found (0 = absent).
        actual: u64,
    },
}

/// What happened to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeOp {
    /// The record came into existence (a `Create`, or a `Put` of a missing record).
    Create,
    /// An existing record was replaced by a `Put`.
    Update,
    /// The record was deleted.
    Delete,
}

impl ChangeOp {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Create => "create",
            ChangeOp::Update => "update",
            ChangeOp::Delete => "delete",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<ChangeOp> {
        match s {
            "create" => Some(ChangeOp::Create),
            "update" => Some(ChangeOp::Update),
            "delete" => Some(ChangeOp::Delete),
            _ => None,
        }
    }
}

/// One entry of the change history, as a watch delivers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The store revision of this change; consecutive, starting at 1.
    pub revision: u64,
    /// Resource kind.
    pub kind: String,
    /// Resource name.
    pub name: String,
    /// What happened.
    pub op: ChangeOp,
    /// The record after the change; `None` for a delete.
    pub record: Option<Record>,
}
