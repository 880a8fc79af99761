//! Three nodes in one process: replication, leader failover, restart and catch-up, and
//! snapshot install on a learner that the log can no longer serve.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use keel_store::{Record, Response, Store, StoreError};
use support::{addr, config, put, start, wait_leader, wait_revision, wait_until, write, Router};

fn record(r: Response) -> Record {
    match r {
        Response::Written(rec) => rec,
        other => panic!("expected Written, got {other:?}"),
    }
}

/// Node 1 founds, 2 and 3 join as learners and become voters.
async fn three_nodes(router: &Router, dir: &std::path::Path) -> Vec<Store> {
    let n1 = start(router, config(dir, 1)).await;
    n1.initialize(addr(1)).await.unwrap();
    wait_leader(std::slice::from_ref(&n1)).await;
    let n2 = start(router, config(dir, 2)).await;
    let n3 = start(router, config(dir, 3)).await;
    n1.add_learner(2, addr(2)).await.unwrap();
    n1.add_learner(3, addr(3)).await.unwrap();
    n1.change_voters(BTreeSet::from([1, 2, 3])).await.unwrap();
    let stores = vec![n1, n2, n3];
    for s in &stores {
        let s = s.clone();
        wait_until("voters {1,2,3} on every node", 10, move || {
            let voters: BTreeSet<u64> = s
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect();
            voters == BTreeSet::from([1, 2, 3])
        })
        .await;
    }
    stores
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_fail_over_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let stores = three_nodes(&router, dir.path()).await;

    // Writes replicate with identical store-owned fields everywhere.
    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push(record(write(&stores, put(&format!("before-{i}"), i)).await));
    }
    let rev = acked.last().unwrap().revision;
    wait_revision(&stores, rev).await;
    for s in &stores {
        for rec in &acked {
            assert_eq!(
                s.get("Vm", &rec.name).unwrap().as_ref(),
                Some(rec),
                "node {}",
                s.node_id()
            );
        }
    }

    // Followers redirect writes and read barriers to the leader.
    let leader = wait_leader(&stores).await;
    let follower = stores
        .iter()
        .find(|s| s.node_id() != leader.node_id())
        .unwrap();
    match follower.write(put("x", 0)).await {
        Err(StoreError::ForwardToLeader {
            leader: Some((id, node)),
        }) => {
            assert_eq!((id, node), (leader.node_id(), addr(leader.node_id())));
        }
        other => panic!("expected ForwardToLeader, got {other:?}"),
    }
    assert!(matches!(
        follower.barrier().await,
        Err(StoreError::ForwardToLeader { .. })
    ));
    leader.barrier().await.unwrap();

    // Kill the leader.
    let dead = leader.node_id();
    leader.shutdown().await.unwrap();
    router.remove(dead);
    let survivors: Vec<Store> = stores
        .iter()
        .filter(|s| s.node_id() != dead)
        .cloned()
        .collect();
    let new_leader = wait_leader(&survivors).await;
    assert_ne!(new_leader.node_id(), dead);

    for i in 0..10 {
        acked.push(record(
            write(&survivors, put(&format!("after-{i}"), i)).await,
        ));
    }
    let rev = acked.last().unwrap().revision;
    wait_revision(&survivors, rev).await;
    for s in &survivors {
        for rec in &acked {
            let got = s.get("Vm", &rec.name).unwrap();
            assert_eq!(
                got.as_ref(),
                Some(rec),
                "acknowledged write lost on node {}",
                s.node_id()
            );
        }
    }

    // Restart the killed node from its directory: it catches up.
    let back = start(&router, config(dir.path(), dead)).await;
    wait_revision(std::slice::from_ref(&back), rev).await;
    assert_eq!(back.list("Vm").unwrap(), new_leader.list("Vm").unwrap());
    let mut all = survivors.clone();
    all.push(back.clone());
    let last = record(write(&all, put("after-restart", 1)).await);
    wait_revision(&all, last.revision).await;
    assert_eq!(back.get("Vm", "after-restart").unwrap(), Some(last));

    for s in &all {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_loses_quorum_and_majority_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let stores = three_nodes(&router, dir.path()).await;
    let old = wait_leader(&stores).await;
    record(write(&stores, put("a", 1)).await);

    router.isolate(old.node_id());
    match old.write(put("lost", 1)).await {
        Err(StoreError::NoQuorum { .. } | StoreError::ForwardToLeader { .. }) => {}
        other => panic!("an isolated leader must not acknowledge writes: {other:?}"),
    }
    match old.barrier().await {
        Err(StoreError::NoQuorum { .. } | StoreError::ForwardToLeader { .. }) => {}
        other => panic!("an isolated leader must not serve linearizable reads: {other:?}"),
    }
    let rest: Vec<Store> = stores
        .iter()
        .filter(|s| s.node_id() != old.node_id())
        .cloned()
        .collect();
    let rec = record(write(&rest, put("b", 1)).await);

    router.heal(old.node_id());
    wait_revision(&stores, rec.revision).await;
    wait_until("the old leader to follow", 10, || {
        old.metrics().borrow().current_leader != Some(old.node_id())
    })
    .await;
    for s in &stores {
        assert_eq!(s.get("Vm", "b").unwrap().as_ref(), Some(&rec));
        // The unacknowledged write, if it ever committed, is consistent everywhere.
        assert_eq!(s.get("Vm", "lost").unwrap(), old.get("Vm", "lost").unwrap());
    }
    for s in &stores {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_installs_on_a_learner_the_log_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let mut cfg1 = config(dir.path(), 1);
    cfg1.keep_changes = 5;
    let n1 = start(&router, cfg1).await;
    n1.initialize(addr(1)).await.unwrap();
    wait_leader(std::slice::from_ref(&n1)).await;
    for i in 0..20 {
        n1.write(put(&format!("vm{i:02}"), i)).await.unwrap();
    }

    // Snapshot and purge the whole log: a new node can only be served by the snapshot.
    n1.raft().trigger().snapshot().await.unwrap();
    let last = n1.metrics().borrow().last_log_index.unwrap();
    wait_until("a snapshot of the whole log", 10, || {
        n1.metrics().borrow().snapshot.map(|l| l.index) == Some(last)
    })
    .await;
    n1.raft().trigger().purge_log(last).await.unwrap();
    wait_until("the log purged", 10, || {
        n1.metrics().borrow().purged.map(|l| l.index) == Some(last)
    })
    .await;

    let mut cfg2 = config(dir.path(), 2);
    cfg2.keep_changes = 5;
    let n2 = start(&router, cfg2.clone()).await;
    n1.add_learner(2, addr(2)).await.unwrap();
    wait_revision(std::slice::from_ref(&n2), 20).await;
    assert!(
        n2.metrics().borrow().snapshot.is_some(),
        "the learner installed a snapshot"
    );
    assert_eq!(n2.list("Vm").unwrap(), n1.list("Vm").unwrap());

    // The change history came with the snapshot, as far as it reaches.
    assert!(matches!(
        n2.watch(0),
        Err(StoreError::Compacted { oldest: 15 })
    ));
    let mut w = Box::pin(n2.watch(15).unwrap());
    for want in 16..=20 {
        assert_eq!(w.next().await.unwrap().revision, want);
    }
    // And live changes follow on the learner.
    n1.write(put("live", 1)).await.unwrap();
    let c = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((c.revision, c.name.as_str()), (21, "live"));

    // The installed snapshot survives a restart of the learner.
    n2.shutdown().await.unwrap();
    router.remove(2);
    drop(n2);
    let n2 = start(&router, cfg2).await;
    assert_eq!(n2.revision(), 21);
    assert_eq!(n2.list("Vm").unwrap(), n1.list("Vm").unwrap());
    n2.shutdown().await.unwrap();
    n1.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_node_demotes_and_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let stores = three_nodes(&router, dir.path()).await;
    let leader = wait_leader(&stores).await;
    let victim = stores
        .iter()
        .find(|s| s.node_id() != leader.node_id())
        .unwrap()
        .clone();

    leader.remove_node(victim.node_id()).await.unwrap();
    let m = leader.metrics().borrow().membership_config.clone();
    assert!(!m.nodes().any(|(id, _)| *id == victim.node_id()));
    assert_eq!(m.membership().voter_ids().count(), 2);
    // Removing it again is a no-op.
    leader.remove_node(victim.node_id()).await.unwrap();

    let rest: Vec<Store> = stores
        .iter()
        .filter(|s| s.node_id() != victim.node_id())
        .cloned()
        .collect();
    record(write(&rest, put("after-removal", 1)).await);
    for s in &stores {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_can_remove_itself() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let stores = three_nodes(&router, dir.path()).await;
    let leader = wait_leader(&stores).await;
    leader.remove_node(leader.node_id()).await.unwrap();
    let rest: Vec<Store> = stores
        .iter()
        .filter(|s| s.node_id() != leader.node_id())
        .cloned()
        .collect();
    let new_leader = wait_leader(&rest).await;
    let m = new_leader.metrics().borrow().membership_config.clone();
    assert!(!m.nodes().any(|(id, _)| *id == leader.node_id()));
    record(write(&rest, put("after-self-removal", 1)).await);
    for s in &stores {
        s.shutdown().await.unwrap();
    }
}
