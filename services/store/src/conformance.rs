//! Openraft's storage conformance suite (H9) run against the SQLite log store and state machine.

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use tempfile::TempDir;

use crate::log_store::LogStore;
use crate::state_machine::StateMachine;
use crate::types::NodeId;
use crate::TypeConfig;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let fail = |e: crate::StoreError| StorageError::IO {
            source: StorageIOError::write(AnyError::new(&e)),
        };
        let dir = tempfile::tempdir().map_err(|e| StorageError::IO {
            source: StorageIOError::write(AnyError::new(&e)),
        })?;
        let log = LogStore::open(&dir.path().join("raft.db")).map_err(fail)?;
        let (sm, _reader) = StateMachine::open(dir.path(), 10_000).map_err(fail)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}
