//! Keel's replicated store: every resource's desired state, agreed by Raft (openraft 0.9,
//! storage-v2) and kept in SQLite on every voter and learner.
//!
//! The seam is [`Store`]: keeld writes [`Request`]s through it (leader only), reads [`Record`]s
//! from the local replica, watches [`Change`]s, and manages membership. keeld's peer RPC server
//! feeds [`Store::raft`] the Raft messages other nodes send; keeld supplies the
//! [`openraft::RaftNetworkFactory`] that sends this node's messages.
//!
//! # Data flow
//!
//! ```text
//!  keeld API ──write(Request)──▶ Store ──Proposal{at_ms, request}──▶ openraft (leader)
//!                                                                     │ append + replicate
//!                       raft.db (log, vote, committed, purged) ◀──────┤ (LogStore)
//!                                                                     │ once committed
//!                                                                     ▼
//!                                    state machine apply (the only writer of state.db)
//!                                    one SQLite transaction per batch of entries:
//!                                    records + changes + idempotency keys + machine row
//!                                                                     │ commit, then
//!                                                                     ▼ publish revision
//!  keeld API ◀──get/list── read pool (4 read-only connections) ◀── state.db (WAL)
//!  keeld SSE ◀──watch(since)── changes table, then woken by the revision channel
//!
//!  snapshots: VACUUM INTO ──▶ snapshot.db ──openraft──▶ follower: backup API into state.db
//! ```
//!
//! # Why two SQLite files
//!
//! The log and the state machine have different lives. The log (`raft.db`) is append, truncate
//! and purge, written by openraft's core and read by replication streams; the state machine
//! (`state.db`) is written by the apply task and read by the API. Separate files mean separate
//! WAL files and write locks, so appending (and fsyncing) the log never waits for an apply, nor
//! the other way round, and a snapshot is simply a copy of `state.db`, with no log tables to
//! strip out. Both are in WAL mode with `synchronous=FULL`: a write acknowledged by Raft is on
//! disk and survives `kill -9` or a power cut. The last-applied log id, the last membership and
//! the revision counter live in `state.db`'s `machine` row, committed in the same transaction
//! as the data, so a crash never leaves a half-applied entry: on restart openraft re-applies
//! exactly the committed entries after the last applied one.
//!
//! Reads use a separate pool of read-only connections. WAL gives them a consistent view without
//! ever blocking on (or blocking) the writer, so API reads never queue behind an apply. The
//! state machine has a single writer, openraft's apply path (H5); snapshot installs go through
//! the same connection.
//!
//! # Determinism
//!
//! Every replica must reach the same bytes from the same log, so applying never reads a clock,
//! a random source, or node-local configuration that changes results:
//!
//! - `created`: [`Store::write`] wraps the request in a [`Proposal`] carrying the leader's wall
//!   clock (`at_ms`); the log entry holds it, and every replica formats that same instant
//!   (RFC 3339, UTC, milliseconds, fixed width). Leader clocks are not monotonic across
//!   failovers, so `created` orders only roughly.
//! - `uid`: derived from the creating entry's log id and the sub-request's position in it, laid
//!   out as a UUID (version 8). A committed log index is never reused in a cluster, so uids are
//!   unique within a cluster; a re-created record gets a new one.
//! - Idempotency keys: a keyed `Create` is remembered (scoped to `kind/name/key`) for 24 hours
//!   of *leader time*: each applied entry expires keys older than its own `at_ms` minus 24 h,
//!   so every replica forgets the same keys at the same log position. A replay returns the first
//!   result unchanged, even if the record was updated or deleted since, and writes nothing (no
//!   revision, no change).
//! - Revisions: one global counter in `state.db`, +1 per applied `Create`/`Put`/`Delete`
//!   (a `Batch` takes one per sub-request; a refused request or batch takes none).
//!
//! # Watches and history
//!
//! Every change is a row of the `changes` table (revision, kind, name, op, record). The last
//! `keep_changes` rows are kept; the pruned prefix is recorded as the change floor, and
//! `watch(since)` with `since` below it fails with [`StoreError::Compacted`]. The table is part
//! of `state.db`, so a snapshot carries the leader's retained history: after a snapshot
//! install, watches within that history still resume without a gap, and older ones are
//! `Compacted`. A stream re-reads the table whenever the revision moves, so it never skips: if
//! the next revision it needs is gone (it fell behind pruning, or a snapshot jumped past it),
//! the stream ends and the caller's next `watch` reports `Compacted`.
//!
//! # Errors: retry, redirect, or stop
//!
//! Application refusals (`NotFound`, `AlreadyExists`, `VersionConflict`) are values,
//! [`Response::Failed`], because every replica computes the same one. [`StoreError`] keeps
//! openraft's split between "send it elsewhere or retry" ([`StoreError::ForwardToLeader`],
//! [`StoreError::NoQuorum`]) and "this node is stopping" ([`StoreError::Stopped`],
//! [`StoreError::Fatal`]). A storage failure inside Raft (disk full, read-only file system,
//! corruption) makes openraft stop the node: every later call answers `Fatal`/`Stopped`, and
//! [`StoreError::is_fatal`] says when keeld must stop serving and fence itself rather than retry.
//!
//! # Schema versions
//!
//! Each database's `PRAGMA user_version` counts the migrations applied from an append-only list
//! (see `migrations.rs`, H16). A database, or a received snapshot, from a newer build is refused
//! rather than rewritten. The `machine` table's columns are relied on by snapshot metadata and
//! must stay readable by every later schema.
//!
//! # Rejected designs
//!
//! - One SQLite file for log and state: log fsyncs would serialize with applies, and snapshots
//!   would need the log tables stripped.
//! - Persisting only a snapshot and keeping the state in memory: restart would have to replay
//!   from the snapshot, and API reads would contend with the apply path for the in-memory map.
//! - A random `uuid` v4 per create chosen by the proposer: equally deterministic once in the
//!   log, but needs the proposer to know how many records a batch creates; the log id already
//!   gives a unique, replica-independent seed.
//! - Broadcasting changes to watchers from the apply path: a slow watcher would either stall
//!   the writer or drop changes; reading the table from the watcher's own cursor does neither.
#![warn(missing_docs)]
// Tests may unwrap (STYLE H13); the workspace lints deny it everywhere else.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod apply;
mod config;
#[cfg(test)]
mod conformance;
mod db;
mod error;
mod log_store;
mod migrations;
mod snapshot;
mod state_machine;
mod state_reader;
mod store;
mod tables;
mod types;
mod watch;

pub use config::StoreConfig;
pub use error::StoreError;
pub use store::Store;
pub use types::{
    ApplyFailure, Change, ChangeOp, NodeAddr, NodeId, Proposal, Record, Request, Response,
};

openraft::declare_raft_types!(
    /// The openraft type configuration of Keel's store: log entries carry a [`Proposal`],
    /// applying one answers a [`Response`], members are [`NodeAddr`]s, snapshots are bytes.
    pub TypeConfig:
        D = Proposal,
        R = Response,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft node type keeld's peer RPC server talks to.
pub type Raft = openraft::Raft<TypeConfig>;
