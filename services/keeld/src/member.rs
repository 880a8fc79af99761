//! A node that is a cluster member: its store, its peer client, and the cluster operations
//! every API handler and background task goes through.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keel_model::{
    ClusterStatus, JoinRequest, JoinResponse, Member as MemberView, MemberRole, Node, NodeState,
};
use keel_store::{ApplyFailure, NodeAddr, NodeId, Record, Request, Response, Store, StoreError};
use serde::{de::DeserializeOwned, Serialize};
use tracing::{debug, info, warn};

use crate::error::ApiError;
use crate::identity::Identity;
use crate::join;
use crate::peer::{PeerClient, WireError};
use crate::pki::CaMaterial;

/// Store kinds Keel uses for itself.
pub mod kinds {
    /// Cluster-wide settings (the API's first resource).
    pub const SETTINGS: &str = "settings";
    /// Node resources.
    pub const NODES: &str = "nodes";
    /// Users.
    pub const USERS: &str = "users";
    /// Cluster facts and secrets, never served by the API.
    pub const CLUSTER: &str = "cluster";
}

/// Names of the records under [`kinds::CLUSTER`].
pub mod cluster_records {
    /// `{name, created}`.
    pub const INFO: &str = "info";
    /// The CA, [`crate::pki::CaMaterial`].
    pub const CA: &str = "ca";
    /// `{key}`: hex of the token signing key.
    pub const TOKEN_KEY: &str = "token-key";
    /// `{secret}`: the join secret.
    pub const JOIN: &str = "join";
    /// `{next}`: next Raft node id to hand out.
    pub const NEXT_ID: &str = "next-node-id";
}

/// A cluster member's shared state.
pub struct Member {
    /// The replicated store.
    pub store: Store,
    /// Client for node-to-node calls.
    pub peers: PeerClient,
    /// Who this node is.
    pub identity: Identity,
    /// Last heartbeat per node, as seen by this node while leader.
    pub heartbeats: Mutex<HashMap<NodeId, Instant>>,
    /// Nodes whose inventory the leader wants.
    pub want_inventory: Mutex<std::collections::HashSet<NodeId>>,
    /// Inventories received with heartbeats, waiting for the leader to record them.
    pub inventories: Mutex<HashMap<NodeId, keel_model::NodeStatus>>,
    /// The token signing key, cached once read from the store (it never changes).
    token_key: Mutex<Option<Vec<u8>>>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Decodes a record's value.
pub fn decode<T: DeserializeOwned>(rec: &Record) -> Result<T, ApiError> {
    serde_json::from_value(rec.value.clone()).map_err(|e| {
        ApiError::Internal(format!(
            "stored {}/{} does not decode: {e}",
            rec.kind, rec.name
        ))
    })
}

/// Read-modify-write of record `kind/name` with compare-and-set, retried on conflicts (with a
/// short backoff: this replica may trail the leader). `f` changes the value and says whether
/// there is anything to write; nothing is written otherwise. `what` names the kind in errors.
pub async fn update_record<T: Serialize>(
    m: &Member,
    kind: &str,
    what: &str,
    name: &str,
    of: impl Fn(&Record) -> Result<T, ApiError>,
    f: impl Fn(&mut T) -> Result<bool, ApiError>,
) -> Result<T, ApiError> {
    for attempt in 0..20u64 {
        let rec = m
            .get(kind, name)?
            .ok_or_else(|| ApiError::NotFound(format!("{what} {name} does not exist")))?;
        let mut v = of(&rec)?;
        if !f(&mut v)? {
            return Ok(v);
        }
        match m
            .write(Request::Put {
                kind: kind.into(),
                name: name.into(),
                value: encode(&v)?,
                expected_version: Some(rec.version),
            })
            .await?
        {
            Response::Written(rec) => return of(&rec),
            Response::Failed(ApplyFailure::VersionConflict { .. }) => {
                tokio::time::sleep(Duration::from_millis(20 * (attempt + 1))).await;
            }
            Response::Failed(f) => return Err(apply_err(f)),
            other => {
                return Err(ApiError::Internal(format!(
                    "unexpected store answer {other:?}"
                )))
            }
        }
    }
    Err(ApiError::Conflict {
        code: "version_conflict",
        message: format!("{what} {name} keeps changing; retry"),
    })
}

/// [`update_record`] for an infallible change: written only when the value differs.
pub async fn update_value<T: Serialize>(
    m: &Member,
    kind: &str,
    what: &str,
    name: &str,
    of: impl Fn(&Record) -> Result<T, ApiError>,
    f: impl Fn(&mut T),
) -> Result<T, ApiError> {
    update_record(m, kind, what, name, of, |v| {
        let before = encode(v)?;
        f(v);
        Ok(encode(v)? != before)
    })
    .await
}

/// JSON of a value for the store.
pub fn encode<T: Serialize>(v: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::Internal(format!("cannot encode: {e}")))
}

/// The Node resource of a record, with the store's metadata filled in.
pub fn node_of(rec: &Record) -> Result<Node, ApiError> {
    let mut node: Node = decode(rec)?;
    node.metadata.name = rec.name.clone();
    node.metadata.uid = rec.uid.clone();
    node.metadata.version = rec.version;
    node.metadata.created = rec.created.clone();
    Ok(node)
}

/// Maps a store failure to the API (one match, no catch-all, H12).
pub fn store_err(e: StoreError) -> ApiError {
    match e {
        StoreError::ForwardToLeader { .. } => ApiError::NoQuorum("the leader changed; retry".into()),
        StoreError::NoQuorum { .. } => {
            ApiError::NoQuorum("the cluster has no quorum right now; retry when a majority of nodes is up".into())
        }
        StoreError::Compacted { oldest } => ApiError::Gone(format!(
            "history before revision {oldest} was compacted; list again and watch from the current revision"
        )),
        StoreError::NotInitialized => ApiError::NotReady("the store is not initialised yet".into()),
        StoreError::Membership { .. } => {
            ApiError::NoQuorum("another membership change is in progress; retry".into())
        }
        e @ (StoreError::AlreadyInitialized
        | StoreError::Stopped
        | StoreError::Fatal { .. }
        | StoreError::Sqlite { .. }
        | StoreError::SchemaTooNew { .. }
        | StoreError::Migration { .. }
        | StoreError::Io { .. }
        | StoreError::Codec { .. }
        | StoreError::Corrupt { .. }
        | StoreError::Config { .. }
        | StoreError::Task { .. }
        | StoreError::Poisoned { .. }) => ApiError::Internal(format!("store: {e}")),
    }
}

/// Maps an apply failure (a value, deterministic on every replica) to the API.
pub fn apply_err(f: ApplyFailure) -> ApiError {
    match f {
        ApplyFailure::NotFound { kind, name } => {
            ApiError::NotFound(format!("{kind}/{name} does not exist"))
        }
        ApplyFailure::AlreadyExists { kind, name } => ApiError::Conflict {
            code: "already_exists",
            message: format!("{kind}/{name} already exists"),
        },
        ApplyFailure::VersionConflict {
            kind,
            name,
            expected,
            actual,
        } => ApiError::Conflict {
            code: "version_conflict",
            message: if actual == 0 {
                format!("{kind}/{name} does not exist (expected version {expected}); read it again")
            } else if expected == 0 {
                format!("{kind}/{name} already exists at version {actual}")
            } else {
                format!(
                    "{kind}/{name} is at version {actual}, not {expected}; read it again and retry"
                )
            },
        },
    }
}

fn wire_to_api(e: WireError) -> ApiError {
    match e {
        WireError::NotLeader { .. } => ApiError::NoQuorum("the leader changed; retry".into()),
        WireError::NoQuorum(m) => ApiError::NoQuorum(m),
        WireError::Refused {
            status,
            message,
            code,
        } => match status {
            401 => ApiError::Unauthenticated(message),
            403 => ApiError::Forbidden(message),
            404 => ApiError::NotFound(message),
            409 => ApiError::Conflict {
                code: if code == "already_exists" {
                    "already_exists"
                } else {
                    "version_conflict"
                },
                message,
            },
            _ => ApiError::bad(message, None),
        },
        WireError::Internal(m) => ApiError::Internal(m),
    }
}

/// The API's view of a leader-side failure, for the wire.
pub fn api_to_wire(e: ApiError) -> WireError {
    let (status, code, _, _) = e.parts();
    match e {
        ApiError::NoQuorum(m) => WireError::NoQuorum(m),
        ApiError::Internal(m) => WireError::Internal(m),
        other => WireError::Refused {
            status: status.as_u16(),
            code: code.to_string(),
            message: other.to_string(),
        },
    }
}

const FORWARD_DEADLINE: Duration = Duration::from_secs(4);

impl Member {
    /// A member over an open store.
    pub fn new(store: Store, peers: PeerClient, identity: Identity) -> Self {
        Self {
            store,
            peers,
            identity,
            heartbeats: Mutex::new(HashMap::new()),
            want_inventory: Mutex::new(Default::default()),
            inventories: Mutex::new(HashMap::new()),
            token_key: Mutex::new(None),
        }
    }

    /// The current leader, if known.
    pub fn leader(&self) -> Option<(NodeId, NodeAddr)> {
        let m = self.store.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// True while this node leads.
    pub fn is_leader(&self) -> bool {
        self.store.metrics().borrow().current_leader == Some(self.store.node_id())
    }

    /// Commits `req` through the leader, forwarding from followers, retrying across a leader
    /// change until a deadline.
    pub async fn write(&self, req: Request) -> Result<Response, ApiError> {
        let deadline = Instant::now() + FORWARD_DEADLINE;
        loop {
            let attempt: Option<()> = match self.store.write(req.clone()).await {
                Ok(r) => return Ok(r),
                Err(StoreError::ForwardToLeader {
                    leader: Some((_, addr)),
                }) => match self.peers.write(&addr, &req).await {
                    Ok(Ok(r)) => return Ok(r),
                    Ok(Err(WireError::NotLeader { .. })) => None,
                    Ok(Err(e)) => return Err(wire_to_api(e)),
                    Err(e) => {
                        debug!(error = %e, "forwarding a write failed");
                        None
                    }
                },
                Err(StoreError::ForwardToLeader { leader: None }) => None,
                Err(e) => return Err(store_err(e)),
            };
            if attempt.is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            return Err(ApiError::NoQuorum(
                "no leader is reachable; retry when a majority of nodes is up".into(),
            ));
        }
    }

    /// Commits `req` and turns an apply failure into an API error.
    pub async fn write_ok(&self, req: Request) -> Result<Response, ApiError> {
        match self.write(req).await? {
            Response::Failed(f) => Err(apply_err(f)),
            Response::Batch(items) => {
                for r in &items {
                    if let Response::Failed(f) = r {
                        return Err(apply_err(f.clone()));
                    }
                }
                Ok(Response::Batch(items))
            }
            other => Ok(other),
        }
    }

    /// Waits until a local read would see every write acknowledged before this call
    /// (read-index on the leader; followers ask the leader and wait to apply up to it).
    pub async fn linearizable(&self) -> Result<(), ApiError> {
        let deadline = Instant::now() + FORWARD_DEADLINE;
        loop {
            match self.store.barrier().await {
                Ok(()) => return Ok(()),
                Err(StoreError::ForwardToLeader {
                    leader: Some((_, addr)),
                }) => match self.peers.read_index(&addr).await {
                    Ok(Ok(index)) => {
                        let waited = self
                            .store
                            .raft()
                            .wait(Some(FORWARD_DEADLINE))
                            .applied_index_at_least(Some(index), "linearizable read")
                            .await;
                        return waited.map(|_| ()).map_err(|_| {
                            ApiError::NoQuorum(
                                "this node is too far behind the leader; retry".into(),
                            )
                        });
                    }
                    Ok(Err(e)) => debug!(error = %e, "read index refused"),
                    Err(e) => debug!(error = %e, "read index failed"),
                },
                Err(StoreError::ForwardToLeader { leader: None }) => {}
                Err(e) => return Err(store_err(e)),
            }
            if Instant::now() >= deadline {
                return Err(ApiError::NoQuorum(
                    "no leader is reachable; retry when a majority of nodes is up".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A local read of one record.
    pub fn get(&self, kind: &str, name: &str) -> Result<Option<Record>, ApiError> {
        self.store.get(kind, name).map_err(store_err)
    }

    /// A local read of every record of a kind.
    pub fn list(&self, kind: &str) -> Result<Vec<Record>, ApiError> {
        self.store.list(kind).map_err(store_err)
    }

    /// The token signing key.
    pub fn token_key(&self) -> Result<Vec<u8>, ApiError> {
        if let Ok(g) = self.token_key.lock() {
            if let Some(k) = g.as_ref() {
                return Ok(k.clone());
            }
        }
        let rec = self
            .get(kinds::CLUSTER, cluster_records::TOKEN_KEY)?
            .ok_or_else(|| ApiError::NotReady("the cluster is still bootstrapping".into()))?;
        let hex = rec
            .value
            .get("key")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let key =
            join::unhex(hex).ok_or_else(|| ApiError::Internal("token key is corrupt".into()))?;
        if let Ok(mut g) = self.token_key.lock() {
            *g = Some(key.clone());
        }
        Ok(key)
    }

    /// The cluster as `GET /api/v1/cluster` shows it.
    pub fn status(&self) -> Result<ClusterStatus, ApiError> {
        let m = self.store.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let nodes: BTreeMap<u64, Node> = self
            .list(kinds::NODES)?
            .iter()
            .filter_map(|r| node_of(r).ok())
            .map(|n| (n.status.id, n))
            .collect();
        let mut members = Vec::new();
        for (id, addr) in membership.nodes() {
            let node = nodes.get(id);
            members.push(MemberView {
                name: addr.name.clone(),
                id: *id,
                address: node.map(|n| n.status.address.clone()).unwrap_or_else(|| {
                    addr.peer
                        .rsplit_once(':')
                        .map(|(h, _)| h.to_string())
                        .unwrap_or_default()
                }),
                role: if voters.contains(id) {
                    MemberRole::Voter
                } else {
                    MemberRole::Learner
                },
                state: node.map(|n| n.status.state).unwrap_or(NodeState::Joining),
            });
        }
        let leader = m
            .current_leader
            .and_then(|id| membership.get_node(&id).map(|n| n.name.clone()));
        Ok(ClusterStatus {
            name: self.identity.cluster.clone(),
            leader,
            term: m.current_term,
            committed: m.last_applied.map(|l| l.index).unwrap_or(0),
            members,
        })
    }

    /// Role of node `id` in the current membership.
    pub fn role_of(&self, id: NodeId) -> Option<MemberRole> {
        let m = self.store.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if membership.voter_ids().any(|v| v == id) {
            Some(MemberRole::Voter)
        } else if membership.learner_ids().any(|v| v == id) {
            Some(MemberRole::Learner)
        } else {
            None
        }
    }

    /// Admits a node (leader only): checks the join proof, gives it an id and a certificate.
    pub async fn admit(&self, req: &JoinRequest) -> Result<JoinResponse, ApiError> {
        if !self.is_leader() {
            return Err(ApiError::NoQuorum(
                "this node is not the leader; retry".into(),
            ));
        }
        if req.cluster != self.identity.cluster {
            return Err(ApiError::Forbidden(format!(
                "this is cluster {:?}, not {:?}",
                self.identity.cluster, req.cluster
            )));
        }
        let secret = self
            .get(kinds::CLUSTER, cluster_records::JOIN)?
            .and_then(|r| {
                r.value
                    .get("secret")
                    .and_then(|s| s.as_str())
                    .map(str::to_string)
            })
            .ok_or_else(|| ApiError::NotReady("the cluster is still bootstrapping".into()))?;
        if !join::check_request(&secret, req) {
            warn!(node = %req.name, address = %req.address, "join refused: wrong join secret");
            return Err(ApiError::Forbidden(
                "join refused: the join secret does not match".into(),
            ));
        }
        if req.address.parse::<std::net::IpAddr>().is_err() {
            return Err(ApiError::bad(
                format!("{:?} is not an IP address", req.address),
                Some("address".into()),
            ));
        }
        let name = req.name.as_str();
        let id = match self.get(kinds::NODES, name)? {
            Some(rec) => {
                let node = node_of(&rec)?;
                if node.status.address != req.address {
                    return Err(ApiError::Conflict {
                        code: "already_exists",
                        message: format!(
                            "a node named {name} with address {} is already a member; remove it first or pick another name",
                            node.status.address
                        ),
                    });
                }
                node.status.id
            }
            None => self.allocate_node(name, &req.address).await?,
        };
        let ca: CaMaterial = decode(
            &self
                .get(kinds::CLUSTER, cluster_records::CA)?
                .ok_or_else(|| ApiError::NotReady("the cluster is still bootstrapping".into()))?,
        )?;
        let cert = ca.sign_node(&req.csr, name, &req.address).map_err(|e| {
            ApiError::bad(format!("the CSR cannot be signed: {e}"), Some("csr".into()))
        })?;
        info!(node = %name, id, address = %req.address, "node admitted");
        Ok(join::response(&secret, &req.nonce, id, &ca.cert_pem, &cert))
    }

    async fn allocate_node(&self, name: &str, address: &str) -> Result<NodeId, ApiError> {
        loop {
            let counter = self
                .get(kinds::CLUSTER, cluster_records::NEXT_ID)?
                .ok_or_else(|| ApiError::NotReady("the cluster is still bootstrapping".into()))?;
            let next = counter
                .value
                .get("next")
                .and_then(|v| v.as_u64())
                .unwrap_or(2);
            let node = new_node(name, next, address);
            let res = self
                .write(Request::Batch(vec![
                    Request::Put {
                        kind: kinds::CLUSTER.into(),
                        name: cluster_records::NEXT_ID.into(),
                        value: serde_json::json!({ "next": next + 1 }),
                        expected_version: Some(counter.version),
                    },
                    Request::Create {
                        kind: kinds::NODES.into(),
                        name: name.into(),
                        value: encode(&node)?,
                        idempotency_key: None,
                    },
                ]))
                .await?;
            match res {
                Response::Batch(_) => return Ok(next),
                Response::Failed(ApplyFailure::VersionConflict { .. }) => continue,
                Response::Failed(f) => return Err(apply_err(f)),
                other => {
                    return Err(ApiError::Internal(format!(
                        "unexpected store answer {other:?}"
                    )))
                }
            }
        }
    }
}

/// A fresh Node resource for a member.
pub fn new_node(name: &str, id: NodeId, address: &str) -> Node {
    let mut node = Node {
        metadata: keel_model::Metadata {
            name: name.to_string(),
            ..Default::default()
        },
        spec: Default::default(),
        status: Default::default(),
    };
    node.status.id = id;
    node.status.address = address.to_string();
    node.status.api = format!("https://{address}:{}", crate::API_PORT);
    node.status.state = NodeState::Joining;
    node
}
