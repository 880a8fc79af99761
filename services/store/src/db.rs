//! Opening SQLite connections the way the store needs them, and running their blocking calls
//! off the async executor.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::StoreError;

/// How long a connection waits on another connection's lock before giving up with `SQLITE_BUSY`.
/// Only snapshot installs and checkpoints ever contend; this is generous.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens (creating if needed) a read-write connection in WAL mode with `synchronous=FULL`: a
/// commit is on disk before it returns, so an acknowledged write survives a power cut.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(StoreError::sqlite("opening a database"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(StoreError::sqlite("setting the busy timeout"))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(StoreError::sqlite("switching to WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            detail: format!(
                "{} refused WAL mode (journal_mode is {mode})",
                path.display()
            ),
        });
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(StoreError::sqlite("setting synchronous=FULL"))?;
    Ok(conn)
}

/// Opens a read-only connection to a database a writer has already set up (WAL, schema).
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(StoreError::sqlite("opening a reader"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(StoreError::sqlite("setting the busy timeout"))?;
    Ok(conn)
}

/// A connection shared between async callers, used one at a time.
pub(crate) type SharedConn = Arc<Mutex<Connection>>;

/// Runs `f` on `conn` on the blocking thread pool, so SQLite's fsyncs never stall the executor.
pub(crate) async fn blocking<T, F>(
    conn: &SharedConn,
    what: &'static str,
    f: F,
) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
{
    let conn = Arc::clone(conn);
    tokio::task::spawn_blocking(move || {
        let mut guard = conn.lock().map_err(|_| StoreError::Poisoned { what })?;
        f(&mut guard)
    })
    .await
    .map_err(|source| StoreError::Task { step: what, source })?
}

/// Runs a blocking closure (file I/O, a fresh connection) on the blocking thread pool.
pub(crate) async fn spawn_blocking<T, F>(step: &'static str, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| StoreError::Task { step, source })?
}
