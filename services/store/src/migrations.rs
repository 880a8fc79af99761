//! Schema versions (H16): each database's `PRAGMA user_version` counts the migrations applied
//! from an append-only list. Never edit or reorder a released migration; append a new one.
//!
//! Rejected: down-migrations. A replica's state is shared with the cluster (snapshots carry
//! the schema), so a build that finds a newer schema refuses to open it
//! ([`StoreError::SchemaTooNew`]) instead of rewriting data a newer peer depends on. Rolling
//! back a node means restoring its data directory from before the upgrade.

use rusqlite::Connection;

use crate::error::StoreError;

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// Short description, for errors and logs.
    pub name: &'static str,
    /// The statements; run in one transaction together with the `user_version` bump.
    pub sql: &'static str,
}

/// `raft.db`: the Raft log and the vote/committed/purged markers.
pub(crate) const RAFT_DB: &[Migration] = &[Migration {
    name: "raft log and markers",
    sql: "
        CREATE TABLE log (
            idx   INTEGER PRIMARY KEY,
            entry TEXT NOT NULL
        ) STRICT;
        CREATE TABLE markers (
            id        INTEGER PRIMARY KEY CHECK (id = 0),
            vote      TEXT,
            committed TEXT,
            purged    TEXT
        ) STRICT;
        INSERT INTO markers (id) VALUES (0);
    ",
}];

/// `state.db`: the state machine (records, change history, idempotency keys, applied markers).
pub(crate) const STATE_DB: &[Migration] = &[Migration {
    name: "records, changes, idempotency keys, machine row",
    sql: "
        CREATE TABLE records (
            kind     TEXT NOT NULL,
            name     TEXT NOT NULL,
            uid      TEXT NOT NULL,
            version  INTEGER NOT NULL,
            created  TEXT NOT NULL,
            revision INTEGER NOT NULL,
            value    TEXT NOT NULL,
            PRIMARY KEY (kind, name)
        ) STRICT, WITHOUT ROWID;
        CREATE TABLE changes (
            revision INTEGER PRIMARY KEY,
            kind     TEXT NOT NULL,
            name     TEXT NOT NULL,
            op       TEXT NOT NULL,
            record   TEXT
        ) STRICT;
        CREATE TABLE idempotency (
            kind   TEXT NOT NULL,
            name   TEXT NOT NULL,
            key    TEXT NOT NULL,
            at_ms  INTEGER NOT NULL,
            record TEXT NOT NULL,
            PRIMARY KEY (kind, name, key)
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX idempotency_by_time ON idempotency (at_ms);
        CREATE TABLE machine (
            id              INTEGER PRIMARY KEY CHECK (id = 0),
            last_applied    TEXT,
            last_membership TEXT,
            revision        INTEGER NOT NULL,
            change_floor    INTEGER NOT NULL
        ) STRICT;
        INSERT INTO machine (id, revision, change_floor) VALUES (0, 0, 0);
    ",
}];

/// The schema version a database is at.
pub(crate) fn version(conn: &Connection) -> Result<u32, StoreError> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(StoreError::sqlite("reading user_version"))
}

/// The schema version a list of migrations produces.
pub(crate) fn latest(list: &[Migration]) -> u32 {
    u32::try_from(list.len()).unwrap_or(u32::MAX)
}

/// Brings `conn` up to the end of `list`. Each migration commits on its own, with its version,
/// so a failure leaves the database at the last good version.
pub(crate) fn migrate(
    conn: &mut Connection,
    db: &'static str,
    list: &[Migration],
) -> Result<u32, StoreError> {
    let found = version(conn)?;
    let supported = latest(list);
    if found > supported {
        return Err(StoreError::SchemaTooNew {
            db,
            found,
            supported,
        });
    }
    for (done, m) in (found..).zip(list.iter().skip(found as usize)) {
        let version = done + 1;
        let failed = |source| StoreError::Migration {
            db,
            version,
            name: m.name,
            source,
        };
        let tx = conn.transaction().map_err(failed)?;
        tx.execute_batch(m.sql).map_err(failed)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        tracing::info!(db, version, name = m.name, "schema migrated");
    }
    Ok(supported)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_exists(conn: &Connection, name: &str) -> bool {
        conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 1
    }

    const THREE: &[Migration] = &[
        Migration {
            name: "a",
            sql: "CREATE TABLE a (x INTEGER) STRICT;",
        },
        Migration {
            name: "b",
            sql: "CREATE TABLE b (x INTEGER) STRICT;",
        },
        Migration {
            name: "c",
            sql: "CREATE TABLE c (x INTEGER) STRICT;",
        },
    ];

    #[test]
    fn fresh_database_gets_every_migration() {
        for (db, list) in [("raft.db", RAFT_DB), ("state.db", STATE_DB)] {
            let mut conn = Connection::open_in_memory().unwrap();
            assert_eq!(migrate(&mut conn, db, list).unwrap(), latest(list));
            assert_eq!(version(&conn).unwrap(), latest(list));
            // Idempotent: a second open changes nothing.
            assert_eq!(migrate(&mut conn, db, list).unwrap(), latest(list));
        }
    }

    #[test]
    fn forward_from_an_older_version_applies_only_the_rest() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, "t", &THREE[..1]).unwrap();
        assert_eq!(version(&conn).unwrap(), 1);
        migrate(&mut conn, "t", THREE).unwrap();
        assert_eq!(version(&conn).unwrap(), 3);
        assert!(table_exists(&conn, "a") && table_exists(&conn, "b") && table_exists(&conn, "c"));
    }

    #[test]
    fn failure_in_the_middle_leaves_the_last_good_version() {
        let broken = [
            THREE[0],
            Migration {
                name: "half then broken",
                sql: "CREATE TABLE half (x INTEGER) STRICT; THIS IS NOT SQL;",
            },
            THREE[2],
        ];
        let mut conn = Connection::open_in_memory().unwrap();
        let err = migrate(&mut conn, "t", &broken).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Migration {
                    version: 2,
                    name: "half then broken",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(version(&conn).unwrap(), 1);
        assert!(table_exists(&conn, "a"));
        assert!(
            !table_exists(&conn, "half"),
            "the failed migration was not rolled back"
        );
        assert!(!table_exists(&conn, "c"));
        // Fixed list: the migration reruns from where it stopped.
        migrate(&mut conn, "t", THREE).unwrap();
        assert_eq!(version(&conn).unwrap(), 3);
    }

    #[test]
    fn backward_a_newer_schema_is_refused_untouched() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, "t", THREE).unwrap();
        let err = migrate(&mut conn, "t", &THREE[..2]).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::SchemaTooNew {
                    found: 3,
                    supported: 2,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_fatal());
        assert_eq!(version(&conn).unwrap(), 3);
        assert!(table_exists(&conn, "c"));
    }
}
