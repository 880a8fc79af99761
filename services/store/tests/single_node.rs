//! One-node store through the full Raft path: CAS, idempotency, batches, watches, restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use keel_store::{ApplyFailure, ChangeOp, Record, Request, Response, Store, StoreError};
use serde_json::json;
use support::{config, put, single, start, Router};

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

fn cas(name: &str, v: i64, expected: u64) -> Request {
    Request::Put {
        kind: "Vm".into(),
        name: name.into(),
        value: json!({ "v": v }),
        expected_version: Some(expected),
    }
}

fn create(name: &str, key: Option<&str>) -> Request {
    Request::Create {
        kind: "Vm".into(),
        name: name.into(),
        value: json!({ "v": 0 }),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_stale_version_must_not_exist_and_aba() {
    let dir = tempfile::tempdir().unwrap();
    let store = single(&Router::default(), dir.path()).await;

    let v1 = written(store.write(create("web", None)).await.unwrap());
    written(store.write(cas("web", 1, 1)).await.unwrap());
    assert_eq!(
        failed(store.write(cas("web", 2, 1)).await.unwrap()),
        ApplyFailure::VersionConflict {
            kind: "Vm".into(),
            name: "web".into(),
            expected: 1,
            actual: 2
        }
    );
    assert!(matches!(
        failed(store.write(cas("web", 2, 0)).await.unwrap()),
        ApplyFailure::VersionConflict {
            expected: 0,
            actual: 2,
            ..
        }
    ));
    // ABA: delete and recreate; the version restarts, the uid changes, and a writer holding
    // version 2 from before must not win.
    assert!(matches!(
        store.write(delete("web", Some(2))).await.unwrap(),
        Response::Deleted { .. }
    ));
    let again = written(store.write(create("web", None)).await.unwrap());
    assert_eq!(again.version, 1);
    assert_ne!(again.uid, v1.uid);
    assert!(matches!(
        failed(store.write(cas("web", 9, 2)).await.unwrap()),
        ApplyFailure::VersionConflict {
            expected: 2,
            actual: 1,
            ..
        }
    ));
    assert_eq!(store.get("Vm", "web").unwrap(), Some(again));
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_create_returns_the_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = single(&Router::default(), dir.path()).await;

    let first = written(store.write(create("web", Some("req-1"))).await.unwrap());
    let replay = written(store.write(create("web", Some("req-1"))).await.unwrap());
    assert_eq!(replay, first, "same uid, version and revision");
    assert_eq!(store.revision(), first.revision, "a replay writes nothing");
    assert_eq!(
        failed(store.write(create("web", Some("req-2"))).await.unwrap()),
        ApplyFailure::AlreadyExists {
            kind: "Vm".into(),
            name: "web".into()
        }
    );
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_failure_leaves_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = single(&Router::default(), dir.path()).await;
    written(store.write(create("taken", None)).await.unwrap());
    let before = store.revision();

    let batch = Request::Batch(vec![
        put("a", 1),
        put("b", 1),
        create("taken", None),
        put("c", 1),
    ]);
    assert!(matches!(
        failed(store.write(batch).await.unwrap()),
        ApplyFailure::AlreadyExists { .. }
    ));
    assert_eq!(store.list("Vm").unwrap().len(), 1);
    assert_eq!(store.revision(), before);

    let ok = Request::Batch(vec![put("b", 1), put("a", 1)]);
    let Response::Batch(items) = store.write(ok).await.unwrap() else {
        panic!("expected a batch response")
    };
    assert_eq!(items.len(), 2);
    assert_eq!(store.revision(), before + 2, "one revision per sub-request");
    let names: Vec<String> = store
        .list("Vm")
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["a", "b", "taken"], "list is sorted by name");
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_history_then_streams_live_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let store = single(&Router::default(), dir.path()).await;
    for i in 0..5 {
        store.write(put(&format!("vm{i}"), i)).await.unwrap();
    }
    store.write(delete("vm0", None)).await.unwrap();

    let mut from_zero = Box::pin(store.watch(0).unwrap());
    let mut from_three = Box::pin(store.watch(3).unwrap());
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(from_zero.next().await.unwrap());
    }
    assert_eq!(
        seen.iter().map(|c| c.revision).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(seen[0].op, ChangeOp::Create);
    assert_eq!(seen[5].op, ChangeOp::Delete);
    assert!(seen[5].record.is_none());

    // Live: changes made after the watch started arrive in order, exactly once.
    let writer = store.clone();
    let live = tokio::spawn(async move {
        for i in 0..20 {
            writer.write(put("live", i)).await.unwrap();
        }
    });
    for want in 7..=26 {
        let c = tokio::time::timeout(Duration::from_secs(5), from_zero.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.revision, want);
        assert_eq!(
            c.op,
            if want == 7 {
                ChangeOp::Create
            } else {
                ChangeOp::Update
            }
        );
    }
    live.await.unwrap();

    // Resume from 3: 4..=26, no gaps, no duplicates.
    for want in 4..=26 {
        assert_eq!(from_three.next().await.unwrap().revision, want);
    }
    store.shutdown().await.unwrap();
    // Shutdown ends live streams.
    assert!(
        tokio::time::timeout(Duration::from_secs(5), from_zero.next())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_older_than_retained_history_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let mut cfg = config(dir.path(), 1);
    cfg.keep_changes = 5;
    let store = start(&router, cfg).await;
    store.initialize(support::addr(1)).await.unwrap();
    support::wait_leader(std::slice::from_ref(&store)).await;

    for i in 0..12 {
        store.write(put("web", i)).await.unwrap();
    }
    assert_eq!(store.revision(), 12);
    match store.watch(6) {
        Err(StoreError::Compacted { oldest }) => assert_eq!(oldest, 7),
        Err(e) => panic!("expected Compacted, got {e:?}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
    let mut ok = Box::pin(store.watch(7).unwrap());
    for want in 8..=12 {
        assert_eq!(ok.next().await.unwrap().revision, want);
    }
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_disk_keeps_data_vote_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let store = single(&router, dir.path()).await;
    let mut records = Vec::new();
    for i in 0..10 {
        records.push(written(
            store.write(put(&format!("vm{i}"), i)).await.unwrap(),
        ));
    }
    // A snapshot in the middle, so the restart covers snapshot + log tail.
    store.raft().trigger().snapshot().await.unwrap();
    support::wait_until("a snapshot", 10, || {
        store.metrics().borrow().snapshot.is_some()
    })
    .await;
    store.write(delete("vm0", None)).await.unwrap();
    let term = store.metrics().borrow().current_term;
    let revision = store.revision();
    store.shutdown().await.unwrap();
    router.remove(1);
    drop(store);

    let store = start(&router, config(dir.path(), 1)).await;
    assert!(store.is_initialized().await.unwrap());
    assert_eq!(store.revision(), revision);
    assert_eq!(store.get("Vm", "vm0").unwrap(), None);
    assert_eq!(store.get("Vm", "vm5").unwrap().as_ref(), Some(&records[5]));
    assert!(matches!(
        store.initialize(support::addr(1)).await,
        Err(StoreError::AlreadyInitialized)
    ));
    support::wait_leader(std::slice::from_ref(&store)).await;
    // The vote was persisted: the term never goes back after a restart.
    assert!(term >= 1);
    assert!(
        store.metrics().borrow().current_term >= term,
        "the vote survived"
    );
    let mut history = Box::pin(store.watch(0).unwrap());
    assert_eq!(history.next().await.unwrap().revision, 1);
    // And it keeps working.
    let next = written(store.write(put("vm1", 100)).await.unwrap());
    assert_eq!((next.version, next.revision), (2, revision + 1));
    store.barrier().await.unwrap();
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninitialized_store_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let store: Store = start(&router, config(dir.path(), 7)).await;
    assert!(!store.is_initialized().await.unwrap());
    assert!(matches!(
        store.write(put("x", 1)).await,
        Err(StoreError::NotInitialized)
    ));
    assert!(matches!(
        store.barrier().await,
        Err(StoreError::NotInitialized)
    ));
    assert_eq!(store.list("Vm").unwrap(), vec![]);
    store.shutdown().await.unwrap();
    assert!(matches!(
        store.write(put("x", 1)).await,
        Err(StoreError::Stopped)
    ));
}
