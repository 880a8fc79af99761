//! The Raft log in `raft.db`: entries, plus the vote, committed and purged markers, all in one
//! SQLite file in WAL mode with `synchronous=FULL`, so every acknowledged append or vote is on
//! disk before openraft hears it is.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::db::{self, SharedConn};
use crate::error::StoreError;
use crate::migrations::{self, RAFT_DB};
use crate::types::NodeId;
use crate::TypeConfig;

/// The log store openraft owns. Writes are serialized by openraft itself; this type keeps them
/// on one connection.
pub(crate) struct LogStore {
    writer: SharedConn,
    /// One read-only connection shared by the replication streams, so reading entries to send
    /// never waits behind an fsync on the writer.
    reader: SharedConn,
}

/// What replication streams read the log through.
pub(crate) struct LogReader {
    conn: SharedConn,
}

impl LogStore {
    /// Opens (creating and migrating) `raft.db` at `path`.
    pub(crate) fn open(path: &Path) -> Result<LogStore, StoreError> {
        let mut conn = db::open_writer(path)?;
        migrations::migrate(&mut conn, "raft.db", RAFT_DB)?;
        let reader = db::open_reader(path)?;
        Ok(LogStore {
            writer: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }
}

// The markers are JSON in fixed columns of the one `markers` row.
const READ_VOTE: &str = "SELECT vote FROM markers WHERE id = 0";
const READ_COMMITTED: &str = "SELECT committed FROM markers WHERE id = 0";
const READ_PURGED: &str = "SELECT purged FROM markers WHERE id = 0";
const WRITE_VOTE: &str = "UPDATE markers SET vote = ?1 WHERE id = 0";
const WRITE_COMMITTED: &str = "UPDATE markers SET committed = ?1 WHERE id = 0";
const WRITE_PURGED: &str = "UPDATE markers SET purged = ?1 WHERE id = 0";

fn read_marker<T: DeserializeOwned>(
    conn: &Connection,
    sql: &'static str,
) -> Result<Option<T>, StoreError> {
    let json: Option<String> = conn
        .query_row(sql, [], |r| r.get(0))
        .map_err(StoreError::sqlite("reading a raft marker"))?;
    json.map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(StoreError::codec("a raft marker"))
}

fn write_marker<T: Serialize>(
    conn: &Connection,
    sql: &'static str,
    value: Option<&T>,
) -> Result<(), StoreError> {
    let json = value
        .map(serde_json::to_string)
        .transpose()
        .map_err(StoreError::codec("a raft marker"))?;
    conn.execute(sql, params![json])
        .map_err(StoreError::sqlite("writing a raft marker"))?;
    Ok(())
}

/// `[start, end)` of a range of log indexes, clamped to what SQLite integers hold.
fn index_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let max = i64::MAX.unsigned_abs();
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => max,
    };
    (start.min(max), end.min(max))
}

fn read_entries(
    conn: &Connection,
    start: u64,
    end: u64,
) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
    let rows = conn
        .prepare_cached("SELECT entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")
        .and_then(|mut st| {
            st.query_map(params![start, end], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(StoreError::sqlite("reading log entries"))?;
    rows.iter()
        .map(|s| serde_json::from_str(s).map_err(StoreError::codec("a log entry")))
        .collect()
}

async fn get_entries(
    conn: &SharedConn,
    start: u64,
    end: u64,
) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
    db::blocking(conn, "raft.db", move |c| read_entries(c, start, end))
        .await
        .map_err(|e| StorageError::IO {
            source: StorageIOError::read_logs(AnyError::new(&e)),
        })
}

fn write_logs_err(e: StoreError) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::write_logs(AnyError::new(&e)),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let (start, end) = index_bounds(&range);
        get_entries(&self.reader, start, end).await
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let (start, end) = index_bounds(&range);
        get_entries(&self.conn, start, end).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        db::blocking(&self.writer, "raft.db", |c| {
            let purged: Option<LogId<NodeId>> = read_marker(c, READ_PURGED)?;
            let last: Option<String> = c
                .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(StoreError::sqlite("reading the last log entry"))?;
            let last = last
                .map(|s| serde_json::from_str::<Entry<TypeConfig>>(&s))
                .transpose()
                .map_err(StoreError::codec("a log entry"))?
                .map(|e| e.log_id);
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last.or(purged),
            })
        })
        .await
        .map_err(|e| StorageError::IO {
            source: StorageIOError::read_logs(AnyError::new(&e)),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            conn: Arc::clone(&self.reader),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        db::blocking(&self.writer, "raft.db", move |c| {
            write_marker(c, WRITE_VOTE, Some(&vote))
        })
        .await
        .map_err(|e| StorageError::IO {
            source: StorageIOError::write_vote(AnyError::new(&e)),
        })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        db::blocking(&self.writer, "raft.db", |c| read_marker(c, READ_VOTE))
            .await
            .map_err(|e| StorageError::IO {
                source: StorageIOError::read_vote(AnyError::new(&e)),
            })
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        db::blocking(&self.writer, "raft.db", move |c| {
            write_marker(c, WRITE_COMMITTED, committed.as_ref())
        })
        .await
        .map_err(write_logs_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        db::blocking(&self.writer, "raft.db", |c| read_marker(c, READ_COMMITTED))
            .await
            .map_err(|e| StorageError::IO {
                source: StorageIOError::read_logs(AnyError::new(&e)),
            })
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows = entries
            .into_iter()
            .map(|e| serde_json::to_string(&e).map(|json| (e.log_id.index, json)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| write_logs_err(StoreError::codec("a log entry")(e)))?;
        db::blocking(&self.writer, "raft.db", move |c| {
            let tx = c
                .transaction()
                .map_err(StoreError::sqlite("starting an append"))?;
            {
                let mut st = tx
                    .prepare_cached("INSERT OR REPLACE INTO log (idx, entry) VALUES (?1, ?2)")
                    .map_err(StoreError::sqlite("appending to the log"))?;
                for (idx, json) in &rows {
                    st.execute(params![idx, json])
                        .map_err(StoreError::sqlite("appending to the log"))?;
                }
            }
            tx.commit()
                .map_err(StoreError::sqlite("committing an append"))
        })
        .await
        .map_err(write_logs_err)?;
        // synchronous=FULL: the commit above is on disk.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(since = %log_id, "truncating the raft log");
        db::blocking(&self.writer, "raft.db", move |c| {
            c.execute("DELETE FROM log WHERE idx >= ?1", params![log_id.index])
                .map_err(StoreError::sqlite("truncating the log"))?;
            Ok(())
        })
        .await
        .map_err(write_logs_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(upto = %log_id, "purging the raft log");
        db::blocking(&self.writer, "raft.db", move |c| {
            // The marker first, in the same transaction: the log never looks shorter than what
            // it says was purged.
            let tx = c
                .transaction()
                .map_err(StoreError::sqlite("starting a purge"))?;
            write_marker(&tx, WRITE_PURGED, Some(&log_id))?;
            tx.execute("DELETE FROM log WHERE idx <= ?1", params![log_id.index])
                .map_err(StoreError::sqlite("purging the log"))?;
            tx.commit()
                .map_err(StoreError::sqlite("committing a purge"))
        })
        .await
        .map_err(write_logs_err)
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn vote_log_and_markers_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.db");
        {
            let mut log = LogStore::open(&path).unwrap();
            log.save_vote(&Vote::new(3, 1)).await.unwrap();
            log.blocking_append((1..=5).map(|i| blank(3, i)))
                .await
                .unwrap();
            log.save_committed(Some(blank(3, 4).log_id)).await.unwrap();
            log.purge(blank(3, 2).log_id).await.unwrap();
        }
        let mut log = LogStore::open(&path).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        assert_eq!(
            log.read_committed().await.unwrap(),
            Some(blank(3, 4).log_id)
        );
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(blank(3, 2).log_id));
        assert_eq!(state.last_log_id, Some(blank(3, 5).log_id));
        let ids: Vec<u64> = log
            .try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(ids, [3, 4, 5]);
    }

    #[test]
    fn index_bounds_cover_every_range_shape() {
        assert_eq!(index_bounds(&(3..7)), (3, 7));
        assert_eq!(index_bounds(&(3..=7)), (3, 8));
        assert_eq!(index_bounds(&(3..)), (3, i64::MAX.unsigned_abs()));
        assert_eq!(index_bounds(&(..7)), (0, 7));
        assert_eq!(index_bounds(&(..)), (0, i64::MAX.unsigned_abs()));
        assert_eq!(index_bounds(&(u64::MAX..)).0, i64::MAX.unsigned_abs());
    }
}
