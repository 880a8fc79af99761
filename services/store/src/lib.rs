//! Keel's replicated store (placeholder docs; see below).
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
