//! Snapshots: a snapshot is a copy of `state.db` itself, made with `VACUUM INTO`, and it
//! describes itself: its `machine` row holds the last applied log id and membership, so the
//! snapshot's metadata can never disagree with its content.
//!
//! The current snapshot lives in `<dir>/snapshot.db` (rollback-journal mode, so the file alone is
//! the whole database). Openraft sends it to followers too far behind for the log; a follower
//! installs it with SQLite's backup API, which replaces `state.db`'s content in one transaction.
//!
//! Rejected: building the snapshot on demand from the live state every time openraft asks for
//! the current one. It would make the current snapshot's metadata move under openraft's feet
//! and cost a full copy on every restart; a file that is replaced only by newer snapshots is
//! simpler to reason about.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::RaftSnapshotBuilder;
use openraft::{AnyError, Snapshot, SnapshotMeta, StorageError, StorageIOError};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::Connection;
use tokio::sync::Mutex;

use crate::db::{self, SharedConn};
use crate::error::StoreError;
use crate::migrations::{self, STATE_DB};
use crate::tables::MachineRow;
use crate::types::{NodeAddr, NodeId};
use crate::TypeConfig;

const CURRENT: &str = "snapshot.db";
const TMP_PREFIX: &str = "snapshot.";
const TMP_SUFFIX: &str = ".tmp";

/// Owns `snapshot.db` and serializes every replacement of it.
pub(crate) struct SnapshotStore {
    dir: PathBuf,
    state_path: PathBuf,
    /// The metadata of `snapshot.db`; the lock is held while the file is replaced.
    current: Mutex<Option<SnapshotMeta<NodeId, NodeAddr>>>,
    tmp_counter: AtomicU64,
}

impl SnapshotStore {
    /// Opens the snapshot side of `dir`, removing temporary files a crash left behind.
    pub(crate) fn open(dir: &Path, state_path: &Path) -> Result<SnapshotStore, StoreError> {
        let entries = fs::read_dir(dir).map_err(StoreError::io("list", dir))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("list", dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) && name.contains(TMP_SUFFIX) {
                let path = entry.path();
                fs::remove_file(&path).map_err(StoreError::io("remove", &path))?;
            }
        }
        let path = dir.join(CURRENT);
        let current = if path.exists() {
            Some(seal(&path)?)
        } else {
            None
        };
        Ok(SnapshotStore {
            dir: dir.to_owned(),
            state_path: state_path.to_owned(),
            current: Mutex::new(current),
            tmp_counter: AtomicU64::new(0),
        })
    }

    fn tmp_path(&self) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{TMP_PREFIX}{n}{TMP_SUFFIX}"))
    }

    /// Copies the current state into a new snapshot and makes it current, unless a newer one
    /// was installed meanwhile (then the new one is still returned, but not kept).
    pub(crate) async fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let mut current = self.current.lock().await;
        let tmp = self.tmp_path();
        let state_path = self.state_path.clone();
        let (meta, bytes) = {
            let tmp = tmp.clone();
            db::spawn_blocking("building a snapshot", move || {
                remove_if_exists(&tmp)?;
                let conn = db::open_reader(&state_path)?;
                conn.execute("VACUUM INTO ?1", [tmp.to_string_lossy()])
                    .map_err(StoreError::sqlite("copying state.db into a snapshot"))?;
                drop(conn);
                let meta = seal(&tmp)?;
                let bytes = fs::read(&tmp).map_err(StoreError::io("read", &tmp))?;
                Ok((meta, bytes))
            })
            .await?
        };
        let older = current
            .as_ref()
            .is_some_and(|c| c.last_log_id > meta.last_log_id);
        if older {
            remove_if_exists(&tmp)?;
        } else {
            self.make_current(tmp).await?;
            *current = Some(meta.clone());
        }
        tracing::info!(snapshot = %meta, bytes = bytes.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }

    /// The current snapshot, read from `snapshot.db`.
    pub(crate) async fn current(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let current = self.current.lock().await;
        let Some(meta) = current.clone() else {
            return Ok(None);
        };
        let path = self.dir.join(CURRENT);
        let bytes = db::spawn_blocking("reading the snapshot", move || {
            fs::read(&path).map_err(StoreError::io("read", &path))
        })
        .await?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }

    /// Replaces the state machine with a snapshot received from the leader, then keeps the
    /// snapshot as the current one. Returns the revision the state machine is now at.
    pub(crate) async fn install(
        &self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        bytes: Vec<u8>,
        writer: &SharedConn,
    ) -> Result<u64, StoreError> {
        let mut current = self.current.lock().await;
        let tmp = self.tmp_path();
        let got = {
            let tmp = tmp.clone();
            db::spawn_blocking("receiving a snapshot", move || {
                fs::write(&tmp, &bytes).map_err(StoreError::io("write", &tmp))?;
                seal(&tmp)
            })
            .await?
        };
        if got.last_log_id != meta.last_log_id || got.last_membership != meta.last_membership {
            remove_if_exists(&tmp)?;
            return Err(StoreError::Corrupt {
                detail: format!("received snapshot {meta} holds {got}"),
            });
        }
        let src = tmp.clone();
        let revision = db::blocking(writer, "installing a snapshot", move |conn| {
            let from = db::open_reader(&src)?;
            copy_all(&from, conn)?;
            drop(from);
            // A snapshot from an older build is brought up to this build's schema.
            migrations::migrate(conn, "state.db", STATE_DB)?;
            Ok(MachineRow::load(conn)?.revision)
        })
        .await?;
        self.make_current(tmp).await?;
        *current = Some(got);
        tracing::info!(snapshot = %meta, revision, "snapshot installed");
        Ok(revision)
    }

    /// Atomically replaces `snapshot.db` with `tmp` (already synced to disk).
    async fn make_current(&self, tmp: PathBuf) -> Result<(), StoreError> {
        let dir = self.dir.clone();
        db::spawn_blocking("keeping the snapshot", move || {
            let path = dir.join(CURRENT);
            fs::rename(&tmp, &path).map_err(StoreError::io("rename into place", &path))?;
            fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(StoreError::io("sync", &dir))
        })
        .await
    }
}

/// Prepares a snapshot file to stand alone and reads its metadata: switches it to rollback
/// journal mode (no `-wal` beside it), checks its schema, and syncs it to disk.
fn seal(path: &Path) -> Result<SnapshotMeta<NodeId, NodeAddr>, StoreError> {
    let conn = Connection::open(path).map_err(StoreError::sqlite("opening a snapshot"))?;
    let _mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "DELETE", |row| row.get(0))
        .map_err(StoreError::sqlite(
            "switching a snapshot to rollback journal",
        ))?;
    let found = migrations::version(&conn)?;
    let supported = migrations::latest(STATE_DB);
    if found > supported {
        return Err(StoreError::SchemaTooNew {
            db: "snapshot",
            found,
            supported,
        });
    }
    if found == 0 {
        return Err(StoreError::Corrupt {
            detail: format!("{} is not a state snapshot", path.display()),
        });
    }
    let row = MachineRow::load(&conn)?;
    drop(conn);
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io("sync", path))?;
    Ok(meta_of(&row))
}

/// Snapshot metadata from the machine row. The id is derived from the last log id, so the same
/// state always yields the same id, on every node and across restarts.
fn meta_of(row: &MachineRow) -> SnapshotMeta<NodeId, NodeAddr> {
    let snapshot_id = match &row.last_applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        None => "empty".to_owned(),
    };
    SnapshotMeta {
        last_log_id: row.last_applied,
        last_membership: row.last_membership.clone(),
        snapshot_id,
    }
}

/// Replaces `to`'s content with `from`'s in one step: the destination sees the whole snapshot
/// committed in a single transaction, or nothing.
fn copy_all(from: &Connection, to: &mut Connection) -> Result<(), StoreError> {
    const ATTEMPTS: u32 = 1000;
    let failed = StoreError::sqlite("copying a snapshot into state.db");
    let backup = Backup::new(from, to).map_err(StoreError::sqlite("starting a snapshot copy"))?;
    for _ in 0..ATTEMPTS {
        // -1: every page in one step, so the copy commits atomically.
        match backup.step(-1) {
            Ok(StepResult::Done) => return Ok(()),
            Ok(StepResult::More | StepResult::Busy | StepResult::Locked) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Ok(other) => {
                return Err(StoreError::Corrupt {
                    detail: format!("unexpected snapshot copy step result {other:?}"),
                })
            }
            Err(e) => return Err(failed(e)),
        }
    }
    Err(StoreError::Corrupt {
        detail: format!("state.db stayed locked through {ATTEMPTS} snapshot copy attempts"),
    })
}

fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io {
            step: "remove",
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Builds snapshots for openraft; runs concurrently with the apply path on its own connection.
pub(crate) struct SnapshotBuilder {
    pub(crate) snapshots: Arc<SnapshotStore>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.snapshots.build().await.map_err(|e| StorageError::IO {
            source: StorageIOError::write_snapshot(None, AnyError::new(&e)),
        })
    }
}
