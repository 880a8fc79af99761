//! The store's one error enum (H12). Application-level refusals (`NotFound`, `AlreadyExists`,
//! `VersionConflict`) are not here: they are values in [`crate::Response::Failed`].

use std::path::PathBuf;

use openraft::error::{ChangeMembershipError, Fatal};

use crate::types::{NodeAddr, NodeId};

/// Everything that can go wrong talking to the store.
///
/// Three families, kept apart so the edge can react correctly:
/// - **retry or redirect**: [`ForwardToLeader`](Self::ForwardToLeader),
///   [`NoQuorum`](Self::NoQuorum), [`Membership`](Self::Membership) (a change is already in
///   progress, or the request names an unknown learner);
/// - **the caller's view is stale or early**: [`Compacted`](Self::Compacted),
///   [`NotInitialized`](Self::NotInitialized), [`AlreadyInitialized`](Self::AlreadyInitialized);
/// - **fatal, stop and fence** ([`StoreError::is_fatal`]): Raft stopped, disk full, corruption,
///   a read-only file system, a schema from a newer build. Never retried.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// This node is not the leader. `leader` is where to send the request, `None` while an
    /// election is running.
    #[error("this node is not the leader")]
    ForwardToLeader {
        /// The current leader, if known.
        leader: Option<(NodeId, NodeAddr)>,
    },
    /// A majority did not answer in time. For a write the outcome is unknown: it may still
    /// commit, so retry with the same idempotency key or compare-and-set token.
    #[error("no quorum while {step}: {detail}")]
    NoQuorum {
        /// What the store was doing.
        step: &'static str,
        /// What Raft reported.
        detail: String,
    },
    /// The change history no longer reaches back to the requested revision; list again and
    /// watch from the listed revision.
    #[error("history before revision {oldest} was compacted")]
    Compacted {
        /// The oldest `since` a watch can still start from.
        oldest: u64,
    },
    /// The cluster has not been initialized (or this node has not joined it yet).
    #[error("the store is not initialized")]
    NotInitialized,
    /// `initialize` was called on a node that already has a membership.
    #[error("the store is already initialized")]
    AlreadyInitialized,
    /// A membership change was refused.
    #[error("membership change refused")]
    Membership {
        /// Why (`InProgress` is worth a retry; the others are caller errors).
        #[source]
        source: Box<ChangeMembershipError<NodeId>>,
    },
    /// Raft has been shut down (normally, or after a fatal error reported earlier).
    #[error("the store is stopped")]
    Stopped,
    /// Raft stopped itself on an unrecoverable error (storage failure or a panic).
    #[error("the store stopped on a fatal error")]
    Fatal {
        /// What Raft reported.
        #[source]
        source: Box<Fatal<NodeId>>,
    },
    /// SQLite failed.
    #[error("sqlite failed while {step}")]
    Sqlite {
        /// What the store was doing.
        step: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A database was written by a newer build than this one; refusing to touch it.
    #[error("{db} has schema version {found}, newer than the {supported} this build knows")]
    SchemaTooNew {
        /// Which database (`raft.db`, `state.db`, or a received snapshot).
        db: &'static str,
        /// Its `user_version`.
        found: u32,
        /// The number of migrations this build has.
        supported: u32,
    },
    /// A schema migration failed; it was rolled back and the database is at `version - 1`.
    #[error("migration {version} ({name}) of {db} failed")]
    Migration {
        /// Which database.
        db: &'static str,
        /// The version the migration would have produced.
        version: u32,
        /// The migration's name.
        name: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A file operation failed.
    #[error("could not {step} {path}")]
    Io {
        /// What the store was doing.
        step: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Stored JSON did not decode (or a value did not encode).
    #[error("could not encode or decode {what}")]
    Codec {
        /// What was being converted.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// Stored data broke an invariant the store relies on.
    #[error("stored data is inconsistent: {detail}")]
    Corrupt {
        /// What was found.
        detail: String,
    },
    /// The Raft configuration derived from `StoreConfig` was rejected.
    #[error("invalid raft configuration")]
    Config {
        /// Why.
        #[source]
        source: Box<openraft::ConfigError>,
    },
    /// A blocking database task could not run to completion (the runtime is shutting down).
    #[error("background task failed while {step}")]
    Task {
        /// What the store was doing.
        step: &'static str,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A database connection lock was poisoned by an earlier panic.
    #[error("the {what} connection is unusable after an earlier panic")]
    Poisoned {
        /// Which connection.
        what: &'static str,
    },
}

impl StoreError {
    /// Whether this error means the node must stop serving and fence itself (H5): the store is
    /// stopped, the disk is full or read-only, the database is corrupt or from a newer build.
    /// Everything else is the request's problem or worth a retry.
    pub fn is_fatal(&self) -> bool {
        match self {
            StoreError::ForwardToLeader { .. }
            | StoreError::NoQuorum { .. }
            | StoreError::Compacted { .. }
            | StoreError::NotInitialized
            | StoreError::AlreadyInitialized
            | StoreError::Membership { .. }
            | StoreError::Config { .. } => false,
            StoreError::Sqlite { source, .. } => sqlite_is_fatal(source),
            StoreError::Stopped
            | StoreError::Fatal { .. }
            | StoreError::SchemaTooNew { .. }
            | StoreError::Migration { .. }
            | StoreError::Io { .. }
            | StoreError::Codec { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Task { .. }
            | StoreError::Poisoned { .. } => true,
        }
    }

    pub(crate) fn sqlite(step: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        move |source| StoreError::Sqlite { step, source }
    }

    pub(crate) fn codec(what: &'static str) -> impl FnOnce(serde_json::Error) -> StoreError {
        move |source| StoreError::Codec { what, source }
    }

    pub(crate) fn io(
        step: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { step, path, source }
    }
}

/// SQLite failures that no retry will fix: the disk is full, read-only or failing, or the file is
/// not (or no longer) a database.
fn sqlite_is_fatal(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseCorrupt
            | ErrorCode::NotADatabase
            | ErrorCode::DiskFull
            | ErrorCode::ReadOnly
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::PermissionDenied,
        ) => true,
        // Busy/locked are transient; the rest (constraint, misuse, type errors) are bugs in a
        // request, not in the node.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_handles_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<StoreError>();
        send_sync::<crate::Store>();
    }

    #[test]
    fn disk_full_is_fatal_and_busy_is_not() {
        let full = StoreError::Sqlite {
            step: "test",
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            ),
        };
        let busy = StoreError::Sqlite {
            step: "test",
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            ),
        };
        assert!(full.is_fatal());
        assert!(!busy.is_fatal());
        assert!(!StoreError::ForwardToLeader { leader: None }.is_fatal());
        assert!(StoreError::Stopped.is_fatal());
    }
}
