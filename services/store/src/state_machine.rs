//! The state machine openraft drives: applies committed entries to `state.db` (the only writer
//! of that file), and hands out and installs snapshots.

use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, LogId, OptionalSend, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};

use crate::apply;
use crate::db::{self, SharedConn};
use crate::error::StoreError;
use crate::migrations::{self, STATE_DB};
use crate::snapshot::{SnapshotBuilder, SnapshotStore};
use crate::state_reader::StateReader;
use crate::tables::MachineRow;
use crate::types::{NodeAddr, NodeId, Response};
use crate::TypeConfig;

/// `state.db`'s writer, owned by openraft once the store is open.
pub(crate) struct StateMachine {
    writer: SharedConn,
    reader: Arc<StateReader>,
    snapshots: Arc<SnapshotStore>,
    keep_changes: u64,
}

impl StateMachine {
    /// Opens (creating and migrating) `<dir>/state.db`, its read pool and its snapshot file.
    pub(crate) fn open(
        dir: &Path,
        keep_changes: u64,
    ) -> Result<(StateMachine, Arc<StateReader>), StoreError> {
        let path = dir.join("state.db");
        let mut conn = db::open_writer(&path)?;
        migrations::migrate(&mut conn, "state.db", STATE_DB)?;
        let revision = MachineRow::load(&conn)?.revision;
        let reader = Arc::new(StateReader::open(&path, revision)?);
        let snapshots = Arc::new(SnapshotStore::open(dir, &path)?);
        let sm = StateMachine {
            writer: Arc::new(Mutex::new(conn)),
            reader: Arc::clone(&reader),
            snapshots,
            keep_changes,
        };
        Ok((sm, reader))
    }
}

fn read_err(e: StoreError) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::read_state_machine(AnyError::new(&e)),
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddr>), StorageError<NodeId>>
    {
        let row = db::blocking(&self.writer, "state.db writer", |c| MachineRow::load(c))
            .await
            .map_err(read_err)?;
        Ok((row.last_applied, row.last_membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let keep = self.keep_changes;
        let (responses, revision) = db::blocking(&self.writer, "state.db writer", move |c| {
            apply::apply_entries(c, &entries, keep)
        })
        .await
        .map_err(|e| StorageError::IO {
            source: StorageIOError::apply(last, AnyError::new(&e)),
        })?;
        self.reader.publish(revision);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            snapshots: Arc::clone(&self.snapshots),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let revision = self
            .snapshots
            .install(meta, snapshot.into_inner(), &self.writer)
            .await
            .map_err(|e| StorageError::IO {
                source: StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)),
            })?;
        self.reader.publish(revision);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.snapshots
            .current()
            .await
            .map_err(|e| StorageError::IO {
                source: StorageIOError::read_snapshot(None, AnyError::new(&e)),
            })
    }
}
