use std::collections::BTreeSet;

use openraft::{CommittedLeaderId, Membership};
use serde_json::json;

use super::*;
use crate::migrations::{migrate, STATE_DB};
use crate::tables;

const T0: u64 = 1_700_000_000_000;

struct Machine {
    conn: Connection,
    next_index: u64,
    keep_changes: u64,
}

impl Machine {
    fn new() -> Machine {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, "state.db", STATE_DB).unwrap();
        Machine {
            conn,
            next_index: 1,
            keep_changes: 10_000,
        }
    }

    fn log_id(&mut self) -> LogId<NodeId> {
        let id = LogId::new(CommittedLeaderId::new(2, 1), self.next_index);
        self.next_index += 1;
        id
    }

    fn apply_at(&mut self, at_ms: u64, request: Request) -> Response {
        let entry = Entry::<TypeConfig> {
            log_id: self.log_id(),
            payload: EntryPayload::Normal(Proposal { at_ms, request }),
        };
        let (mut out, _) = apply_entries(&mut self.conn, &[entry], self.keep_changes).unwrap();
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    fn apply(&mut self, request: Request) -> Response {
        self.apply_at(T0, request)
    }

    fn machine(&self) -> MachineRow {
        MachineRow::load(&self.conn).unwrap()
    }

    fn get(&self, kind: &str, name: &str) -> Option<Record> {
        tables::read_record(&self.conn, kind, name).unwrap()
    }
}

fn put(name: &str, v: i64, expected: Option<u64>) -> Request {
    Request::Put {
        kind: "Vm".into(),
        name: name.into(),
        value: json!({ "v": v }),
        expected_version: expected,
    }
}

fn create(name: &str, v: i64, key: Option<&str>) -> Request {
    Request::Create {
        kind: "Vm".into(),
        name: name.into(),
        value: json!({ "v": v }),
        idempotency_key: key.map(str::to_owned),
    }
}

fn delete(name: &str, expected: Option<u64>) -> Request {
    Request::Delete {
        kind: "Vm".into(),
        name: name.into(),
        expected_version: expected,
    }
}

fn written(r: Response) -> Record {
    match r {
        Response::Written(rec) => rec,
        other => panic!("expected Written, got {other:?}"),
    }
}

fn failed(r: Response) -> ApplyFailure {
    match r {
        Response::Failed(f) => f,
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn create_sets_store_owned_fields_deterministically() {
    let mut a = Machine::new();
    let mut b = Machine::new();
    let ra = written(a.apply(create("web", 1, None)));
    let rb = written(b.apply(create("web", 1, None)));
    assert_eq!(
        ra, rb,
        "two replicas applying the same entry must agree byte for byte"
    );
    assert_eq!(ra.version, 1);
    assert_eq!(ra.revision, 1);
    assert_eq!(ra.created, "2023-11-14T22:13:20.000Z");
    assert_eq!(ra.value, json!({ "v": 1 }));
    assert!(uuid::Uuid::parse_str(&ra.uid).is_ok(), "{}", ra.uid);
}

#[test]
fn put_with_stale_version_conflicts_with_expected_and_actual() {
    let mut m = Machine::new();
    written(m.apply(create("web", 1, None)));
    let v2 = written(m.apply(put("web", 2, Some(1))));
    assert_eq!(v2.version, 2);
    assert_eq!(
        failed(m.apply(put("web", 3, Some(1)))),
        ApplyFailure::VersionConflict {
            kind: "Vm".into(),
            name: "web".into(),
            expected: 1,
            actual: 2
        }
    );
    assert_eq!(m.get("Vm", "web").unwrap().value, json!({ "v": 2 }));
    // A refused request takes no revision.
    assert_eq!(m.machine().revision, 2);
}

#[test]
fn put_must_not_exist_conflicts_on_existing_and_creates_when_absent() {
    let mut m = Machine::new();
    let rec = written(m.apply(put("web", 1, Some(0))));
    assert_eq!(rec.version, 1);
    assert_eq!(
        failed(m.apply(put("web", 2, Some(0)))),
        ApplyFailure::VersionConflict {
            kind: "Vm".into(),
            name: "web".into(),
            expected: 0,
            actual: 1
        }
    );
    assert_eq!(
        failed(m.apply(put("db", 2, Some(4)))),
        ApplyFailure::VersionConflict {
            kind: "Vm".into(),
            name: "db".into(),
            expected: 4,
            actual: 0
        }
    );
    // Unconditional put updates, keeping uid and created.
    let up = written(m.apply(put("web", 3, None)));
    assert_eq!(
        (up.version, &up.uid, &up.created),
        (2, &rec.uid, &rec.created)
    );
}

#[test]
fn aba_delete_then_recreate_restarts_version_and_changes_uid() {
    let mut m = Machine::new();
    let first = written(m.apply(create("web", 1, None)));
    written(m.apply(put("web", 2, Some(1))));
    assert_eq!(
        failed(m.apply(delete("web", Some(1)))),
        ApplyFailure::VersionConflict {
            kind: "Vm".into(),
            name: "web".into(),
            expected: 1,
            actual: 2
        }
    );
    assert!(matches!(
        m.apply(delete("web", Some(2))),
        Response::Deleted { revision: 3, .. }
    ));
    assert_eq!(
        failed(m.apply(delete("web", None))),
        ApplyFailure::NotFound {
            kind: "Vm".into(),
            name: "web".into()
        }
    );
    let again = written(m.apply(create("web", 9, None)));
    assert_eq!(again.version, 1);
    assert_ne!(again.uid, first.uid);
    // A writer still holding version 2 from before the delete must not win.
    assert!(matches!(
        failed(m.apply(put("web", 5, Some(2)))),
        ApplyFailure::VersionConflict {
            expected: 2,
            actual: 1,
            ..
        }
    ));
}

#[test]
fn idempotent_create_replays_the_first_record() {
    let mut m = Machine::new();
    let first = written(m.apply(create("web", 1, Some("k1"))));
    // Later changes do not alter what a replay returns.
    written(m.apply(put("web", 2, None)));
    let replay = written(m.apply(create("web", 1, Some("k1"))));
    assert_eq!(replay, first);
    assert_eq!(m.machine().revision, 2, "a replay writes nothing");
    assert_eq!(
        failed(m.apply(create("web", 1, Some("k2")))),
        ApplyFailure::AlreadyExists {
            kind: "Vm".into(),
            name: "web".into()
        }
    );
    assert_eq!(
        failed(m.apply(create("web", 1, None))),
        ApplyFailure::AlreadyExists {
            kind: "Vm".into(),
            name: "web".into()
        }
    );
}

#[test]
fn idempotency_keys_expire_after_a_day_of_leader_time() {
    let mut m = Machine::new();
    let first = written(m.apply_at(T0, create("web", 1, Some("k"))));
    let within = written(m.apply_at(T0 + IDEMPOTENCY_WINDOW_MS, create("web", 1, Some("k"))));
    assert_eq!(within, first);
    // Any entry a day later expires the key on every replica alike.
    written(m.apply_at(T0 + IDEMPOTENCY_WINDOW_MS + 1, create("other", 1, None)));
    assert!(matches!(
        failed(m.apply_at(T0 + IDEMPOTENCY_WINDOW_MS + 2, create("web", 1, Some("k")))),
        ApplyFailure::AlreadyExists { .. }
    ));
}

#[test]
fn batch_is_all_or_nothing() {
    let mut m = Machine::new();
    written(m.apply(create("existing", 1, None)));
    let batch = Request::Batch(vec![
        create("a", 1, None),
        put("b", 1, None),
        create("existing", 2, None),
    ]);
    assert!(matches!(
        failed(m.apply(batch)),
        ApplyFailure::AlreadyExists { .. }
    ));
    assert!(m.get("Vm", "a").is_none());
    assert!(m.get("Vm", "b").is_none());
    assert_eq!(m.machine().revision, 1);
    assert_eq!(tables::changes_after(&m.conn, 0, 100).unwrap().len(), 1);

    let ok = Request::Batch(vec![
        create("a", 1, None),
        put("b", 1, None),
        delete("existing", None),
    ]);
    let Response::Batch(items) = m.apply(ok) else {
        panic!("expected a batch response")
    };
    let a = written(items[0].clone());
    let b = written(items[1].clone());
    assert_eq!((a.revision, b.revision), (2, 3));
    assert_ne!(a.uid, b.uid, "sub-requests of one entry get distinct uids");
    assert!(matches!(items[2], Response::Deleted { revision: 4, .. }));
    assert_eq!(m.machine().revision, 4);
}

#[test]
fn membership_and_blank_entries_update_the_applied_markers() {
    let mut m = Machine::new();
    let mem = Membership::<NodeId, crate::NodeAddr>::new(vec![BTreeSet::from([1, 2])], None);
    let entries = [
        Entry::<TypeConfig> {
            log_id: m.log_id(),
            payload: EntryPayload::Blank,
        },
        Entry::<TypeConfig> {
            log_id: m.log_id(),
            payload: EntryPayload::Membership(mem.clone()),
        },
    ];
    let (out, revision) = apply_entries(&mut m.conn, &entries, 10).unwrap();
    assert_eq!(out, vec![Response::Batch(vec![]), Response::Batch(vec![])]);
    assert_eq!(revision, 0);
    let row = m.machine();
    assert_eq!(row.last_applied, Some(entries[1].log_id));
    assert_eq!(
        row.last_membership,
        StoredMembership::new(Some(entries[1].log_id), mem)
    );
}

#[test]
fn change_history_is_pruned_to_the_configured_length() {
    let mut m = Machine::new();
    m.keep_changes = 3;
    for i in 0..5 {
        written(m.apply(put("web", i, None)));
    }
    let row = m.machine();
    assert_eq!((row.revision, row.change_floor), (5, 2));
    let revs: Vec<u64> = tables::changes_after(&m.conn, 0, 100)
        .unwrap()
        .iter()
        .map(|c| c.revision)
        .collect();
    assert_eq!(revs, vec![3, 4, 5]);
}

#[test]
fn uid_layout_keeps_index_term_and_sub_apart() {
    let a = derive_uid(&LogId::new(CommittedLeaderId::new(1, 1), 1), 0);
    let b = derive_uid(&LogId::new(CommittedLeaderId::new(1, 1), 1), 1);
    let c = derive_uid(&LogId::new(CommittedLeaderId::new(1, 1), 2), 0);
    let d = derive_uid(&LogId::new(CommittedLeaderId::new(2, 1), 1), 0);
    let all = BTreeSet::from([a.clone(), b, c, d]);
    assert_eq!(all.len(), 4);
    let u = uuid::Uuid::parse_str(&a).unwrap();
    assert_eq!(u.get_version_num(), 8);
    assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
}

#[test]
fn created_is_fixed_width_rfc3339_utc() {
    assert_eq!(format_created(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(format_created(1_234), "1970-01-01T00:00:01.234Z");
    assert_eq!(format_created(u64::MAX), "9999-12-31T23:59:59.999Z");
}

#[test]
fn batching_of_entries_does_not_change_results() {
    // Openraft may apply the same entries in different groupings on different replicas.
    let proposals = [
        (T0, create("web", 1, Some("k"))),
        (T0 + IDEMPOTENCY_WINDOW_MS + 1, put("other", 1, None)),
        (T0 + IDEMPOTENCY_WINDOW_MS + 2, create("web", 1, Some("k"))),
        (
            T0 + IDEMPOTENCY_WINDOW_MS + 3,
            Request::Batch(vec![put("a", 1, None), delete("a", None)]),
        ),
    ];
    let entries: Vec<Entry<TypeConfig>> = proposals
        .iter()
        .enumerate()
        .map(|(i, (at_ms, request))| Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), i as u64 + 1),
            payload: EntryPayload::Normal(Proposal {
                at_ms: *at_ms,
                request: request.clone(),
            }),
        })
        .collect();

    let mut together = Machine::new();
    let (all_at_once, _) = apply_entries(&mut together.conn, &entries, 10_000).unwrap();
    let mut apart = Machine::new();
    let one_by_one: Vec<Response> = entries
        .iter()
        .flat_map(|e| {
            apply_entries(&mut apart.conn, std::slice::from_ref(e), 10_000)
                .unwrap()
                .0
        })
        .collect();
    assert_eq!(all_at_once, one_by_one);
    assert!(matches!(
        all_at_once[2],
        Response::Failed(ApplyFailure::AlreadyExists { .. })
    ));
    assert_eq!(together.machine(), apart.machine());
}
