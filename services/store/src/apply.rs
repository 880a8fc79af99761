//! Applying committed log entries to `state.db`: the only code that writes the state machine.
//!
//! Everything here is a pure function of the database and the entries, so every replica that
//! applies the same log ends in the same state and answers the same responses. In particular it
//! never reads a clock or a random source: the creation time comes from the leader's clock in
//! the [`Proposal`], and uids are derived from the log id.

use openraft::{Entry, EntryPayload, LogId, StoredMembership};
use rusqlite::Connection;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::error::StoreError;
use crate::tables::{self, MachineRow};
use crate::types::{ApplyFailure, Change, ChangeOp, NodeId, Proposal, Record, Request, Response};
use crate::TypeConfig;

/// How long, in leader time, a create's idempotency key is remembered: a client retrying within
/// a day gets the first result back. Expiry uses the time carried in the entries being applied,
/// so every replica forgets the same keys at the same log position.
pub(crate) const IDEMPOTENCY_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// RFC 3339, UTC, fixed width with milliseconds: the same instant formats to the same bytes on
/// every replica.
const CREATED_FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Applies `entries` in one transaction, together with the new last-applied log id, last
/// membership and revision. Returns one response per entry and the revision after them.
pub(crate) fn apply_entries(
    conn: &mut Connection,
    entries: &[Entry<TypeConfig>],
    keep_changes: u64,
) -> Result<(Vec<Response>, u64), StoreError> {
    let mut tx = conn
        .transaction()
        .map_err(StoreError::sqlite("starting an apply transaction"))?;
    let mut machine = MachineRow::load(&tx)?;
    let mut responses = Vec::with_capacity(entries.len());
    for entry in entries {
        let response = match &entry.payload {
            EntryPayload::Blank => Response::Batch(Vec::new()),
            EntryPayload::Membership(m) => {
                machine.last_membership = StoredMembership::new(Some(entry.log_id), m.clone());
                Response::Batch(Vec::new())
            }
            EntryPayload::Normal(proposal) => {
                // Expire before each entry, not once per call: openraft may hand different
                // replicas the same entries in different batches, and a replay must see the
                // same keys everywhere.
                tables::forget_creates_before(
                    &tx,
                    proposal.at_ms.saturating_sub(IDEMPOTENCY_WINDOW_MS),
                )?;
                apply_proposal(&mut tx, entry.log_id, proposal, &mut machine.revision)?
            }
        };
        machine.last_applied = Some(entry.log_id);
        responses.push(response);
    }
    let floor = machine.revision.saturating_sub(keep_changes);
    if floor > machine.change_floor {
        tables::prune_changes(&tx, floor)?;
        machine.change_floor = floor;
    }
    machine.save(&tx)?;
    tx.commit()
        .map_err(StoreError::sqlite("committing an apply transaction"))?;
    Ok((responses, machine.revision))
}

/// Applies one proposal inside a savepoint: a `Failed` response rolls back everything it did,
/// which is what makes a `Batch` all-or-nothing.
fn apply_proposal(
    tx: &mut rusqlite::Transaction<'_>,
    log_id: LogId<NodeId>,
    proposal: &Proposal,
    revision: &mut u64,
) -> Result<Response, StoreError> {
    let mut sp = tx
        .savepoint()
        .map_err(StoreError::sqlite("opening a savepoint"))?;
    let mut applier = Applier {
        conn: &sp,
        log_id,
        at_ms: proposal.at_ms,
        sub: 0,
        revision: *revision,
    };
    let response = applier.apply(&proposal.request)?;
    let after = applier.revision;
    if let Response::Failed(_) = response {
        sp.rollback()
            .map_err(StoreError::sqlite("rolling back a failed request"))?;
    } else {
        *revision = after;
    }
    sp.commit()
        .map_err(StoreError::sqlite("releasing a savepoint"))?;
    Ok(response)
}

/// The context of one proposal being applied.
struct Applier<'c> {
    conn: &'c Connection,
    log_id: LogId<NodeId>,
    at_ms: u64,
    /// Counts sub-requests of this entry, so each gets its own uid.
    sub: u32,
    revision: u64,
}

impl Applier<'_> {
    fn apply(&mut self, req: &Request) -> Result<Response, StoreError> {
        match req {
            Request::Create {
                kind,
                name,
                value,
                idempotency_key,
            } => {
                let sub = self.next_sub();
                self.create(kind, name, value, idempotency_key.as_deref(), sub)
            }
            Request::Put {
                kind,
                name,
                value,
                expected_version,
            } => {
                let sub = self.next_sub();
                self.put(kind, name, value, *expected_version, sub)
            }
            Request::Delete {
                kind,
                name,
                expected_version,
            } => {
                self.next_sub();
                self.delete(kind, name, *expected_version)
            }
            Request::Batch(reqs) => {
                let mut out = Vec::with_capacity(reqs.len());
                for r in reqs {
                    match self.apply(r)? {
                        failed @ Response::Failed(_) => return Ok(failed),
                        ok => out.push(ok),
                    }
                }
                Ok(Response::Batch(out))
            }
        }
    }

    fn next_sub(&mut self) -> u32 {
        let sub = self.sub;
        self.sub = self.sub.saturating_add(1);
        sub
    }

    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn create(
        &mut self,
        kind: &str,
        name: &str,
        value: &serde_json::Value,
        key: Option<&str>,
        sub: u32,
    ) -> Result<Response, StoreError> {
        if let Some(key) = key {
            if let Some(first) = tables::remembered_create(self.conn, kind, name, key)? {
                return Ok(Response::Written(first));
            }
        }
        if tables::read_record(self.conn, kind, name)?.is_some() {
            return Ok(Response::Failed(ApplyFailure::AlreadyExists {
                kind: kind.to_owned(),
                name: name.to_owned(),
            }));
        }
        let rec = self.write_new(kind, name, value, sub)?;
        if let Some(key) = key {
            tables::remember_create(self.conn, key, self.at_ms, &rec)?;
        }
        Ok(Response::Written(rec))
    }

    fn put(
        &mut self,
        kind: &str,
        name: &str,
        value: &serde_json::Value,
        expected: Option<u64>,
        sub: u32,
    ) -> Result<Response, StoreError> {
        let current = tables::read_record(self.conn, kind, name)?;
        if let Some(failure) = check_version(kind, name, expected, current.as_ref()) {
            return Ok(Response::Failed(failure));
        }
        let rec = match current {
            None => self.write_new(kind, name, value, sub)?,
            Some(old) => {
                let rec = Record {
                    version: old.version + 1,
                    revision: self.next_revision(),
                    value: value.clone(),
                    ..old
                };
                self.write(ChangeOp::Update, rec)?
            }
        };
        Ok(Response::Written(rec))
    }

    fn delete(
        &mut self,
        kind: &str,
        name: &str,
        expected: Option<u64>,
    ) -> Result<Response, StoreError> {
        let Some(current) = tables::read_record(self.conn, kind, name)? else {
            return Ok(Response::Failed(ApplyFailure::NotFound {
                kind: kind.to_owned(),
                name: name.to_owned(),
            }));
        };
        if let Some(failure) = check_version(kind, name, expected, Some(&current)) {
            return Ok(Response::Failed(failure));
        }
        let revision = self.next_revision();
        tables::delete_record(self.conn, kind, name)?;
        tables::insert_change(
            self.conn,
            &Change {
                revision,
                kind: kind.to_owned(),
                name: name.to_owned(),
                op: ChangeOp::Delete,
                record: None,
            },
        )?;
        Ok(Response::Deleted {
            kind: kind.to_owned(),
            name: name.to_owned(),
            revision,
        })
    }

    fn write_new(
        &mut self,
        kind: &str,
        name: &str,
        value: &serde_json::Value,
        sub: u32,
    ) -> Result<Record, StoreError> {
        let rec = Record {
            kind: kind.to_owned(),
            name: name.to_owned(),
            uid: derive_uid(&self.log_id, sub),
            version: 1,
            created: format_created(self.at_ms),
            revision: self.next_revision(),
            value: value.clone(),
        };
        self.write(ChangeOp::Create, rec)
    }

    fn write(&mut self, op: ChangeOp, rec: Record) -> Result<Record, StoreError> {
        tables::upsert_record(self.conn, &rec)?;
        tables::insert_change(
            self.conn,
            &Change {
                revision: rec.revision,
                kind: rec.kind.clone(),
                name: rec.name.clone(),
                op,
                record: Some(rec.clone()),
            },
        )?;
        Ok(rec)
    }
}

/// Compare-and-set: `None` always passes, `Some(0)` needs the record absent, `Some(v)` needs it
/// at version `v`.
fn check_version(
    kind: &str,
    name: &str,
    expected: Option<u64>,
    current: Option<&Record>,
) -> Option<ApplyFailure> {
    let expected = expected?;
    let actual = current.map_or(0, |r| r.version);
    (actual != expected).then(|| ApplyFailure::VersionConflict {
        kind: kind.to_owned(),
        name: name.to_owned(),
        expected,
        actual,
    })
}

/// A record's uid, as a UUID (version 8, "custom") whose bits are the creating entry's log index
/// (48 bits), its term (low 32 bits) and the sub-request number within the entry (30 bits).
///
/// A committed log index is never reused in a cluster's history, so the uid is unique within the
/// cluster, and every replica derives the same one. It is not unique across clusters.
pub(crate) fn derive_uid(log_id: &LogId<NodeId>, sub: u32) -> String {
    let index = u128::from(log_id.index & 0xFFFF_FFFF_FFFF);
    let term = u128::from(log_id.leader_id.term & 0xFFFF_FFFF);
    let sub = u128::from(sub & 0x3FFF_FFFF);
    let version = 0x8u128 << 76;
    let variant = 0b10u128 << 62;
    let bits = (index << 80) | version | variant | (term << 30) | sub;
    uuid::Uuid::from_u128(bits).hyphenated().to_string()
}

/// The creation timestamp for a proposal made at `at_ms` on the leader.
pub(crate) fn format_created(at_ms: u64) -> String {
    let nanos = i128::from(at_ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(CREATED_FORMAT).ok())
        // Only a clock beyond year 9999 gets here; pin it so replicas still agree.
        .unwrap_or_else(|| "9999-12-31T23:59:59.999Z".to_owned())
}

#[cfg(test)]
mod tests;
