//! Liveness and membership.
//!
//! Every node sends a heartbeat to the leader each second (with its inventory when that
//! changed). The leader, each half second, (1) records Ready/NotReady transitions in the Node
//! resources and (2) converges the Raft membership to the Node resources: a node with a record
//! but no membership is added as a learner; learners are promoted so that voters stay odd (at
//! most 5). Both are level-triggered: a new leader recomputes everything from the store.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_model::{Node, NodeState, NodeStatus};
use keel_store::{NodeAddr, NodeId, Request};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::member::{encode, kinds, node_of, Member};
use crate::peer::{Heartbeat, HeartbeatAck};

/// How often nodes send heartbeats.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(1000);
/// A node missing heartbeats this long is NotReady.
pub const NOT_READY_AFTER: Duration = Duration::from_millis(3500);

/// Multiplier of [`NOT_READY_AFTER`], set once at start from `--raft-timing-scale`: on slow or
/// emulated machines heartbeats are as late as Raft's own messages.
static TIMING_SCALE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// Scales the liveness threshold like the Raft timings (1 = as built).
pub fn set_timing_scale(scale: u32) {
    TIMING_SCALE.store(scale.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// How long without a heartbeat before a node is not ready, scaled.
pub fn not_ready_after() -> Duration {
    NOT_READY_AFTER
        * TIMING_SCALE
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1)
}

/// Sends heartbeats to the leader (or records its own when it leads).
pub async fn heartbeat_loop(member: Arc<Member>, mut shutdown: watch::Receiver<bool>) {
    let mut sent_fingerprint = String::new();
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let inventory = crate::inventory::collect();
        let fp = crate::inventory::fingerprint(&inventory);
        let hb = Heartbeat {
            id: member.identity.id,
            name: member.identity.name.clone(),
            inventory: (fp != sent_fingerprint).then(|| inventory.clone()),
        };
        let has_inventory = hb.inventory.is_some();
        let Some((leader_id, leader)) = member.leader() else {
            continue;
        };
        let ack = if leader_id == member.identity.id {
            Ok(receive(&member, hb))
        } else {
            match member.peers.heartbeat(&leader, &hb).await {
                Ok(Ok(ack)) => Ok(ack),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        match ack {
            Ok(ack) => {
                if ack.want_inventory {
                    sent_fingerprint.clear();
                } else if has_inventory {
                    sent_fingerprint = fp;
                }
            }
            Err(e) => debug!(error = %e, "heartbeat not delivered"),
        }
    }
}

/// The leader's side of a heartbeat.
pub fn receive(member: &Member, hb: Heartbeat) -> HeartbeatAck {
    if let Ok(mut map) = member.heartbeats.lock() {
        map.insert(hb.id, Instant::now());
    }
    let mut want = false;
    if let Ok(mut pending) = member.want_inventory.lock() {
        match hb.inventory {
            Some(inv) => {
                pending.remove(&hb.id);
                if let Ok(mut inv_map) = member.inventories.lock() {
                    inv_map.insert(hb.id, inv);
                }
            }
            None => want = pending.contains(&hb.id),
        }
    }
    HeartbeatAck {
        want_inventory: want,
    }
}

/// Leader duties, active only while this node leads.
pub async fn leader_loop(member: Arc<Member>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut leading_since: Option<Instant> = None;
    let mut adding: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if !member.is_leader() {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(|| {
            // A new leader knows no heartbeats: ask everyone for inventory, and give them a
            // grace period before judging liveness.
            if let Ok(mut map) = member.heartbeats.lock() {
                map.clear();
            }
            if let Ok(mut p) = member.want_inventory.lock() {
                p.extend(
                    member
                        .list(kinds::NODES)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|r| node_of(r).ok())
                        .map(|n| n.status.id),
                );
            }
            Instant::now()
        });
        if let Err(e) = liveness(&member, since).await {
            debug!(error = %e, "liveness round failed");
        }
        if adding.as_ref().map(|h| h.is_finished()).unwrap_or(true) {
            match membership(&member).await {
                Ok(Some(handle)) => adding = Some(handle),
                Ok(None) => {}
                Err(e) => debug!(error = %e, "membership round failed"),
            }
        }
    }
}

async fn liveness(member: &Member, leading_since: Instant) -> anyhow::Result<()> {
    let now = Instant::now();
    let beats = member
        .heartbeats
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    let inventories: Vec<(NodeId, NodeStatus)> = member
        .inventories
        .lock()
        .map(|mut m| m.drain().collect())
        .unwrap_or_default();
    for rec in member.list(kinds::NODES)? {
        let mut node: Node = node_of(&rec)?;
        let id = node.status.id;
        let heard = beats
            .get(&id)
            .map(|t| now.duration_since(*t) < not_ready_after());
        let state = match heard {
            Some(true) => NodeState::Ready,
            Some(false) => NodeState::NotReady,
            None if now.duration_since(leading_since) < not_ready_after() => node.status.state,
            None if node.status.state == NodeState::Joining => NodeState::Joining,
            None => NodeState::NotReady,
        };
        let mut changed = false;
        if let Some((_, inv)) = inventories.iter().find(|(i, _)| *i == id) {
            let keep = node.status.clone();
            node.status = NodeStatus {
                id: keep.id,
                state: keep.state,
                role: None,
                address: keep.address,
                api: keep.api,
                last_heartbeat: keep.last_heartbeat,
                // Written by keeld's own loops, not part of the inventory.
                maintenance: keep.maintenance,
                unmanaged_domains: keep.unmanaged_domains,
                host_config: keep.host_config,
                hypervisor: keep.hypervisor,
                ..inv.clone()
            };
            changed = true;
        }
        if state != node.status.state {
            info!(node = %rec.name, from = ?node.status.state, to = ?state, "node state changed");
            node.status.state = state;
            changed = true;
        }
        if changed {
            if state == NodeState::Ready {
                node.status.last_heartbeat = Some(crate::now_rfc3339());
            }
            let res = member
                .write(Request::Put {
                    kind: kinds::NODES.into(),
                    name: rec.name.clone(),
                    value: encode(&node)?,
                    expected_version: Some(rec.version),
                })
                .await;
            if let Err(e) = res {
                debug!(node = %rec.name, error = %e, "recording node state failed");
            }
        }
    }
    Ok(())
}

/// Converges the Raft membership to the Node resources. Returns a task when it started adding
/// a learner (which waits for the learner to catch up).
async fn membership(member: &Arc<Member>) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let metrics = member.store.metrics().borrow().clone();
    let cfg = metrics.membership_config.membership().clone();
    let voters: BTreeSet<NodeId> = cfg.voter_ids().collect();
    let learners: BTreeSet<NodeId> = cfg.learner_ids().collect();
    let nodes: Vec<Node> = member
        .list(kinds::NODES)?
        .iter()
        .filter_map(|r| node_of(r).ok())
        .collect();

    // 0. A member without a Node record was removed: take it out of Raft (never the leader
    //    itself; the founder briefly has no record while it bootstraps).
    let recorded: BTreeSet<NodeId> = nodes.iter().map(|n| n.status.id).collect();
    if member
        .get(kinds::CLUSTER, crate::member::cluster_records::INFO)?
        .is_some()
    {
        if let Some(gone) = voters
            .iter()
            .chain(learners.iter())
            .find(|id| !recorded.contains(id) && Some(**id) != metrics.current_leader)
        {
            info!(id = gone, "removing a member that has no Node record");
            member.store.remove_node(*gone).await?;
            return Ok(None);
        }
    }

    // 1. A node with a record but no membership joins as a learner.
    if let Some(n) = nodes
        .iter()
        .find(|n| !voters.contains(&n.status.id) && !learners.contains(&n.status.id))
    {
        let id = n.status.id;
        let addr = NodeAddr {
            name: n.metadata.name.clone(),
            peer: format!("{}:{}", n.status.address, crate::PEER_PORT),
            api: n.status.api.clone(),
        };
        info!(node = %addr.name, id, "adding learner");
        let m = member.clone();
        return Ok(Some(tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(30), m.store.add_learner(id, addr)).await
            {
                Ok(Ok(())) => info!(id, "learner added"),
                Ok(Err(e)) => warn!(id, error = %e, "adding learner failed"),
                Err(_) => warn!(id, "adding learner timed out"),
            }
        })));
    }

    // 2. Promote caught-up, ready learners so voters are the largest odd number <= 5.
    let total = voters.len() + learners.len();
    let target = largest_odd_at_most(total.min(5));
    if voters.len() < target {
        let ready: Vec<NodeId> = nodes
            .iter()
            .filter(|n| learners.contains(&n.status.id) && n.status.state == NodeState::Ready)
            .map(|n| n.status.id)
            .collect();
        let missing = target - voters.len();
        if ready.len() >= missing || (voters.len() + ready.len()) % 2 == 1 {
            let add: Vec<NodeId> = ready.into_iter().take(missing).collect();
            let mut new_voters = voters.clone();
            new_voters.extend(add.iter().copied());
            if new_voters.len() % 2 == 1 && new_voters.len() > voters.len() {
                info!(?new_voters, "promoting learners to voters");
                member.store.change_voters(new_voters).await?;
            }
        }
    }
    // 3. After a removal, voters may be even (or more than 5): demote the newest non-leader
    //    voters to learners until they are odd again.
    if voters.len() > target {
        let leader = metrics.current_leader;
        let mut keep: Vec<NodeId> = voters.iter().copied().collect();
        while keep.len() > target {
            let Some(pos) = keep.iter().rposition(|id| Some(*id) != leader) else {
                break;
            };
            keep.remove(pos);
        }
        let keep: BTreeSet<NodeId> = keep.into_iter().collect();
        info!(?keep, "demoting voters so that their number is odd");
        member.store.change_voters(keep).await?;
    }
    Ok(None)
}

/// The largest odd number not above `n` (at least 1).
pub fn largest_odd_at_most(n: usize) -> usize {
    if n <= 1 {
        1
    } else if n % 2 == 1 {
        n
    } else {
        n - 1
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn voters_stay_odd() {
        let t: Vec<usize> = (0..8).map(super::largest_odd_at_most).collect();
        assert_eq!(t, vec![1, 1, 1, 3, 3, 5, 5, 7]);
    }
}
