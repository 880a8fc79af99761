//! In-process cluster harness: a router of Raft nodes by id that stands in for keeld's mTLS
//! peer RPC, with the ability to cut a node off ("kill" it) and bring it back.
//!
//! Every RPC goes through serde_json both ways, as it does on the wire, so an entry that does
//! not round-trip breaks these tests rather than a real cluster.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_store::{
    NodeAddr, NodeId, Raft, Request, Response, Store, StoreConfig, StoreError, TypeConfig,
};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Routes RPCs between the Raft nodes of one test.
#[derive(Clone, Default)]
pub struct Router {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    nodes: BTreeMap<NodeId, Raft>,
    isolated: BTreeSet<NodeId>,
}

impl Router {
    /// The network factory node `from` opens its store with.
    pub fn network(&self, from: NodeId) -> Network {
        Network {
            router: self.clone(),
            from,
        }
    }

    /// Makes `store` reachable.
    pub fn add(&self, store: &Store) {
        self.inner
            .lock()
            .unwrap()
            .nodes
            .insert(store.node_id(), store.raft().clone());
    }

    /// Makes node `id` unreachable, as if it were powered off.
    pub fn remove(&self, id: NodeId) {
        self.inner.lock().unwrap().nodes.remove(&id);
    }

    /// Cuts node `id` off in both directions, leaving it running.
    pub fn isolate(&self, id: NodeId) {
        self.inner.lock().unwrap().isolated.insert(id);
    }

    /// Undoes `isolate`.
    pub fn heal(&self, id: NodeId) {
        self.inner.lock().unwrap().isolated.remove(&id);
    }

    fn target(&self, from: NodeId, to: NodeId) -> Result<Raft, Unreachable> {
        let inner = self.inner.lock().unwrap();
        let down = || {
            Unreachable::new(&std::io::Error::other(format!(
                "node {to} is unreachable from {from}"
            )))
        };
        if inner.isolated.contains(&from) || inner.isolated.contains(&to) {
            return Err(down());
        }
        inner.nodes.get(&to).cloned().ok_or_else(down)
    }
}

/// The network factory of one node.
pub struct Network {
    router: Router,
    from: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &NodeAddr) -> Connection {
        Connection {
            router: self.router.clone(),
            from: self.from,
            to: target,
        }
    }
}

/// A client from one node to another.
pub struct Connection {
    router: Router,
    from: NodeId,
    to: NodeId,
}

/// Round-trips `v` through JSON, as the wire would.
fn wire<T: Serialize + DeserializeOwned>(v: &T) -> Result<T, NetworkError> {
    serde_json::to_vec(v)
        .and_then(|b| serde_json::from_slice(&b))
        .map_err(|e| NetworkError::new(&e))
}

impl Connection {
    fn raft(&self) -> Result<Raft, Unreachable> {
        self.router.target(self.from, self.to)
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        let raft = self.raft().map_err(RPCError::Unreachable)?;
        let rpc = wire(&rpc).map_err(RPCError::Network)?;
        let resp = raft
            .append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))?;
        // The reply is lost if the sender was cut off meanwhile.
        self.raft().map_err(RPCError::Unreachable)?;
        wire(&resp).map_err(RPCError::Network)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let raft = self.raft().map_err(RPCError::Unreachable)?;
        let rpc = wire(&rpc).map_err(RPCError::Network)?;
        let resp = raft
            .install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))?;
        wire(&resp).map_err(RPCError::Network)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        let raft = self.raft().map_err(RPCError::Unreachable)?;
        let resp = raft
            .vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))?;
        wire(&resp).map_err(RPCError::Network)
    }
}

/// The address node `id` advertises (never dialled in-process).
pub fn addr(id: NodeId) -> NodeAddr {
    NodeAddr {
        name: format!("node-{id}"),
        peer: format!("10.0.0.{id}:7443"),
        api: format!("https://10.0.0.{id}:8443"),
    }
}

/// Short timings so the suite stays fast, but not so short that a loaded 2-core box sees
/// spurious elections.
pub fn config(dir: &Path, id: NodeId) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir.join(format!("node-{id}")), id, "test-cluster");
    cfg.heartbeat = Duration::from_millis(50);
    cfg.election_min = Duration::from_millis(300);
    cfg.election_max = Duration::from_millis(600);
    cfg.write_timeout = Duration::from_secs(2);
    cfg
}

/// Opens node `id`'s store and connects it to the router.
pub async fn start(router: &Router, cfg: StoreConfig) -> Store {
    let id = cfg.node_id;
    let store = Store::open(cfg, router.network(id)).await.unwrap();
    router.add(&store);
    store
}

/// A single-node cluster in `dir`, founded and with a leader.
pub async fn single(router: &Router, dir: &Path) -> Store {
    let store = start(router, config(dir, 1)).await;
    store.initialize(addr(1)).await.unwrap();
    wait_leader(std::slice::from_ref(&store)).await;
    store
}

/// Polls `f` until it holds, failing after `secs` seconds.
pub async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The store among `stores` that all of them agree is the leader.
pub async fn wait_leader(stores: &[Store]) -> Store {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leaders: BTreeSet<Option<NodeId>> = stores
            .iter()
            .map(|s| s.metrics().borrow().current_leader)
            .collect();
        if let [Some(id)] = leaders.iter().copied().collect::<Vec<_>>()[..] {
            if let Some(s) = stores.iter().find(|s| s.node_id() == id) {
                if s.metrics().borrow().state.is_leader() {
                    return s.clone();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader among {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes through whichever of `stores` leads, retrying across elections like a client would.
pub async fn write(stores: &[Store], req: Request) -> Response {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leader = wait_leader(stores).await;
        match leader.write(req.clone()).await {
            Ok(resp) => return resp,
            Err(e @ (StoreError::ForwardToLeader { .. } | StoreError::NoQuorum { .. })) => {
                assert!(Instant::now() < deadline, "write kept failing: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("write failed: {e:?}"),
        }
    }
}

/// Waits until every one of `stores` has applied up to `revision`.
pub async fn wait_revision(stores: &[Store], revision: u64) {
    for s in stores {
        let s = s.clone();
        wait_until(
            &format!("node {} at revision {revision}", s.node_id()),
            15,
            move || s.revision() >= revision,
        )
        .await;
    }
}

pub fn put(name: &str, v: i64) -> Request {
    Request::Put {
        kind: "Vm".into(),
        name: name.into(),
        value: serde_json::json!({ "v": v }),
        expected_version: None,
    }
}
