//! The SQL for `state.db`'s tables, shared by the apply path (writer) and the read pool.
//! Every function takes a plain `&Connection` so it works inside a transaction or savepoint.

use openraft::{LogId, StoredMembership};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::StoreError;
use crate::types::{Change, ChangeOp, NodeAddr, NodeId, Record};

/// The state machine's single bookkeeping row: written in the same transaction as the data it
/// describes, so a crash never leaves data and markers out of step.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MachineRow {
    /// The last log entry whose effects are in this database.
    pub last_applied: Option<LogId<NodeId>>,
    /// The last membership config applied.
    pub last_membership: StoredMembership<NodeId, NodeAddr>,
    /// The last revision handed out.
    pub revision: u64,
    /// Changes with a revision at or below this were pruned: the oldest `since` a watch accepts.
    pub change_floor: u64,
}

impl MachineRow {
    pub(crate) fn load(conn: &Connection) -> Result<MachineRow, StoreError> {
        let (applied, membership, revision, change_floor) = conn
            .query_row(
                "SELECT last_applied, last_membership, revision, change_floor FROM machine WHERE id = 0",
                [],
                |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, u64>(2)?,
                        r.get::<_, u64>(3)?,
                    ))
                },
            )
            .map_err(StoreError::sqlite("reading the machine row"))?;
        let last_applied = applied
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(StoreError::codec("the last applied log id"))?;
        let last_membership = membership
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(StoreError::codec("the last membership"))?
            .unwrap_or_default();
        Ok(MachineRow {
            last_applied,
            last_membership,
            revision,
            change_floor,
        })
    }

    pub(crate) fn save(&self, conn: &Connection) -> Result<(), StoreError> {
        let applied = self
            .last_applied
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(StoreError::codec("the last applied log id"))?;
        let membership = serde_json::to_string(&self.last_membership)
            .map_err(StoreError::codec("the last membership"))?;
        conn.prepare_cached(
            "UPDATE machine SET last_applied = ?1, last_membership = ?2, revision = ?3, change_floor = ?4 WHERE id = 0",
        )
        .and_then(|mut st| st.execute(params![applied, membership, self.revision, self.change_floor]))
        .map_err(StoreError::sqlite("writing the machine row"))?;
        Ok(())
    }
}

type RecordRow = (String, String, u64, String, u64, String);

fn record_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn record_of(
    kind: &str,
    (name, uid, version, created, revision, value): RecordRow,
) -> Result<Record, StoreError> {
    Ok(Record {
        kind: kind.to_owned(),
        name,
        uid,
        version,
        created,
        revision,
        value: serde_json::from_str(&value).map_err(StoreError::codec("a record value"))?,
    })
}

pub(crate) fn read_record(
    conn: &Connection,
    kind: &str,
    name: &str,
) -> Result<Option<Record>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT name, uid, version, created, revision, value FROM records WHERE kind = ?1 AND name = ?2",
        )
        .and_then(|mut st| st.query_row(params![kind, name], record_row).optional())
        .map_err(StoreError::sqlite("reading a record"))?;
    row.map(|row| record_of(kind, row)).transpose()
}

pub(crate) fn list_records(conn: &Connection, kind: &str) -> Result<Vec<Record>, StoreError> {
    let rows = conn
        .prepare_cached(
            "SELECT name, uid, version, created, revision, value FROM records WHERE kind = ?1 ORDER BY name",
        )
        .and_then(|mut st| st.query_map(params![kind], record_row)?.collect::<Result<Vec<_>, _>>())
        .map_err(StoreError::sqlite("listing records"))?;
    rows.into_iter().map(|row| record_of(kind, row)).collect()
}

pub(crate) fn upsert_record(conn: &Connection, rec: &Record) -> Result<(), StoreError> {
    let value = serde_json::to_string(&rec.value).map_err(StoreError::codec("a record value"))?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO records (kind, name, uid, version, created, revision, value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut st| {
        st.execute(params![
            rec.kind,
            rec.name,
            rec.uid,
            rec.version,
            rec.created,
            rec.revision,
            value
        ])
    })
    .map_err(StoreError::sqlite("writing a record"))?;
    Ok(())
}

pub(crate) fn delete_record(conn: &Connection, kind: &str, name: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM records WHERE kind = ?1 AND name = ?2")
        .and_then(|mut st| st.execute(params![kind, name]))
        .map_err(StoreError::sqlite("deleting a record"))?;
    Ok(())
}

pub(crate) fn insert_change(conn: &Connection, change: &Change) -> Result<(), StoreError> {
    let record = change
        .record
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(StoreError::codec("a change"))?;
    conn.prepare_cached(
        "INSERT INTO changes (revision, kind, name, op, record) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| {
        st.execute(params![
            change.revision,
            change.kind,
            change.name,
            change.op.as_str(),
            record
        ])
    })
    .map_err(StoreError::sqlite("recording a change"))?;
    Ok(())
}

/// Up to `limit` changes with a revision above `since`, oldest first.
pub(crate) fn changes_after(
    conn: &Connection,
    since: u64,
    limit: u32,
) -> Result<Vec<Change>, StoreError> {
    let rows = conn
        .prepare_cached(
            "SELECT revision, kind, name, op, record FROM changes WHERE revision > ?1 ORDER BY revision LIMIT ?2",
        )
        .and_then(|mut st| {
            st.query_map(params![since, limit], |r| {
                Ok((
                    r.get::<_, u64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(StoreError::sqlite("reading the change history"))?;
    rows.into_iter()
        .map(|(revision, kind, name, op, record)| {
            let op = ChangeOp::parse(&op).ok_or_else(|| StoreError::Corrupt {
                detail: format!("change {revision} has unknown op {op:?}"),
            })?;
            let record = record
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(StoreError::codec("a change"))?;
            Ok(Change {
                revision,
                kind,
                name,
                op,
                record,
            })
        })
        .collect()
}

pub(crate) fn prune_changes(conn: &Connection, upto: u64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM changes WHERE revision <= ?1")
        .and_then(|mut st| st.execute(params![upto]))
        .map_err(StoreError::sqlite("pruning the change history"))?;
    Ok(())
}

pub(crate) fn change_floor(conn: &Connection) -> Result<u64, StoreError> {
    conn.query_row("SELECT change_floor FROM machine WHERE id = 0", [], |r| {
        r.get(0)
    })
    .map_err(StoreError::sqlite("reading the change floor"))
}

/// The record a keyed create of `kind/name` returned, if that key is still remembered.
pub(crate) fn remembered_create(
    conn: &Connection,
    kind: &str,
    name: &str,
    key: &str,
) -> Result<Option<Record>, StoreError> {
    let json = conn
        .prepare_cached("SELECT record FROM idempotency WHERE kind = ?1 AND name = ?2 AND key = ?3")
        .and_then(|mut st| {
            st.query_row(params![kind, name, key], |r| r.get::<_, String>(0))
                .optional()
        })
        .map_err(StoreError::sqlite("looking up an idempotency key"))?;
    json.map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(StoreError::codec("a remembered create"))
}

pub(crate) fn remember_create(
    conn: &Connection,
    key: &str,
    at_ms: u64,
    rec: &Record,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(rec).map_err(StoreError::codec("a remembered create"))?;
    conn.prepare_cached("INSERT OR REPLACE INTO idempotency (kind, name, key, at_ms, record) VALUES (?1, ?2, ?3, ?4, ?5)")
        .and_then(|mut st| st.execute(params![rec.kind, rec.name, key, at_ms, json]))
        .map_err(StoreError::sqlite("remembering an idempotency key"))?;
    Ok(())
}

pub(crate) fn forget_creates_before(conn: &Connection, at_ms: u64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM idempotency WHERE at_ms < ?1")
        .and_then(|mut st| st.execute(params![at_ms]))
        .map_err(StoreError::sqlite("expiring idempotency keys"))?;
    Ok(())
}
