//! The read side of `state.db`: a small pool of read-only connections, so API reads never queue
//! behind the apply path (WAL lets readers and the one writer run at once), plus the revision
//! channel that wakes watchers after each commit.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, TryLockError};

use rusqlite::Connection;
use tokio::sync::watch;

use crate::db;
use crate::error::StoreError;
use crate::tables;
use crate::types::{Change, Record};

/// Read connections per store. Reads are sub-millisecond; four cover concurrent API handlers
/// and watchers on a 2-core node without holding many file descriptors.
const READERS: usize = 4;

/// Read-only access to the state machine, shared by `Store` handles, watch streams and the
/// state machine (which publishes revisions).
pub(crate) struct StateReader {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
    revision: watch::Sender<u64>,
    closed: AtomicBool,
}

impl StateReader {
    pub(crate) fn open(path: &Path, revision: u64) -> Result<StateReader, StoreError> {
        let conns = (0..READERS)
            .map(|_| db::open_reader(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StateReader {
            conns,
            next: AtomicUsize::new(0),
            revision: watch::Sender::new(revision),
            closed: AtomicBool::new(false),
        })
    }

    /// Runs `f` on a free connection, or waits for one.
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        for conn in &self.conns {
            match conn.try_lock() {
                Ok(guard) => return f(&guard),
                Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => {}
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len().max(1);
        let conn = self.conns.get(i).ok_or(StoreError::Poisoned {
            what: "state reader",
        })?;
        let guard = conn.lock().map_err(|_| StoreError::Poisoned {
            what: "state reader",
        })?;
        f(&guard)
    }

    pub(crate) fn get(&self, kind: &str, name: &str) -> Result<Option<Record>, StoreError> {
        self.with(|c| tables::read_record(c, kind, name))
    }

    pub(crate) fn list(&self, kind: &str) -> Result<Vec<Record>, StoreError> {
        self.with(|c| tables::list_records(c, kind))
    }

    pub(crate) fn changes_after(&self, since: u64, limit: u32) -> Result<Vec<Change>, StoreError> {
        self.with(|c| tables::changes_after(c, since, limit))
    }

    pub(crate) fn change_floor(&self) -> Result<u64, StoreError> {
        self.with(tables::change_floor)
    }

    /// The last revision committed to `state.db`.
    pub(crate) fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Called by the apply path after each commit (and after a snapshot install).
    pub(crate) fn publish(&self, revision: u64) {
        self.revision.send_replace(revision);
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Ends every watch stream: the store is shutting down.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.revision.send_modify(|_| {});
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}
