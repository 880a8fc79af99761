//! Node-to-node traffic on port 7443, mutual TLS on the cluster CA: Raft RPCs, forwarded
//! writes, read-index requests for linearizable reads on followers, joins forwarded to the
//! leader, and heartbeats.
//!
//! ```text
//!  follower API ──/internal/write──▶ leader store.write
//!  follower API ──/internal/read-index──▶ leader (quorum check) ─▶ follower waits applied ≥ index
//!  openraft ──/raft/{append,vote,snapshot}──▶ peer's Raft
//! ```

use std::time::Duration;

use keel_model::{JoinRequest, JoinResponse, NodeStatus};
use keel_store::{NodeAddr, NodeId, Request, Response, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Error returned over the wire by internal endpoints.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    /// The receiver is not the leader; try this one.
    #[error("not the leader")]
    NotLeader {
        /// The leader the receiver knows of.
        leader: Option<(NodeId, NodeAddr)>,
    },
    /// No quorum now; retry later.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The request was refused (bad join secret, name taken...).
    #[error("{message}")]
    Refused {
        /// HTTP status the API should answer with.
        status: u16,
        /// Stable code.
        code: String,
        /// What was wrong.
        message: String,
    },
    /// Something else failed.
    #[error("{0}")]
    Internal(String),
}

/// A heartbeat from a node to the leader, with its inventory when it changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sender's Raft id.
    pub id: NodeId,
    /// Sender's name.
    pub name: String,
    /// Sender's inventory, sent when it changed or the leader asked for it.
    pub inventory: Option<NodeStatus>,
}

/// The leader's answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The leader wants the full inventory next time.
    pub want_inventory: bool,
}

/// Why a call to a peer failed at the transport level.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Could not connect, or the connection broke.
    #[error("peer {peer} unreachable")]
    Unreachable {
        /// Address.
        peer: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// Writing what a peer sent failed.
    #[error("storing what peer {peer} sent")]
    Io {
        /// Address.
        peer: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Answered with something that is not the expected JSON.
    #[error("peer {peer} answered {status}")]
    BadAnswer {
        /// Address.
        peer: String,
        /// HTTP status.
        status: u16,
    },
}

/// HTTPS client for peers (mutual TLS).
#[derive(Debug, Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    tls: std::sync::Arc<rustls::ClientConfig>,
}

impl PeerClient {
    /// A client presenting the node's certificate and trusting only the cluster CA.
    pub fn new(tls: rustls::ClientConfig) -> Result<Self, reqwest::Error> {
        let shared = std::sync::Arc::new(tls.clone());
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self { http, tls: shared })
    }

    /// The mutual-TLS client configuration, for connections reqwest cannot make (the console
    /// WebSocket to the node hosting a VM).
    pub fn tls_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// POSTs `body` as JSON to `https://{peer}{path}` and decodes the JSON answer.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        peer: &str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, PeerError> {
        let url = format!("https://{peer}{path}");
        let resp = self
            .http
            .post(&url)
            .json(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|source| PeerError::Unreachable {
                peer: peer.to_string(),
                source,
            })?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(PeerError::BadAnswer {
                peer: peer.to_string(),
                status,
            });
        }
        resp.json::<T>()
            .await
            .map_err(|source| PeerError::Unreachable {
                peer: peer.to_string(),
                source,
            })
    }

    /// Streams `https://{peer}{path}` into the file `dest`.
    pub async fn download(
        &self,
        peer: &str,
        path: &str,
        dest: &std::path::Path,
    ) -> Result<u64, PeerError> {
        use tokio::io::AsyncWriteExt;
        let url = format!("https://{peer}{path}");
        let unreachable = |source| PeerError::Unreachable {
            peer: peer.to_string(),
            source,
        };
        let mut resp = self.http.get(&url).send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(PeerError::BadAnswer {
                peer: peer.to_string(),
                status,
            });
        }
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| PeerError::Io {
                peer: peer.to_string(),
                source: e,
            })?;
        let mut n = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            file.write_all(&chunk).await.map_err(|e| PeerError::Io {
                peer: peer.to_string(),
                source: e,
            })?;
            n += chunk.len() as u64;
        }
        file.sync_all().await.map_err(|e| PeerError::Io {
            peer: peer.to_string(),
            source: e,
        })?;
        Ok(n)
    }

    /// Forwards a write to the leader.
    pub async fn write(
        &self,
        leader: &NodeAddr,
        req: &Request,
    ) -> Result<Result<Response, WireError>, PeerError> {
        self.call(&leader.peer, "/internal/write", req, Duration::from_secs(5))
            .await
    }

    /// Asks the leader for a read index.
    pub async fn read_index(&self, leader: &NodeAddr) -> Result<Result<u64, WireError>, PeerError> {
        self.call(
            &leader.peer,
            "/internal/read-index",
            &(),
            Duration::from_secs(3),
        )
        .await
    }

    /// Forwards a join to the leader.
    pub async fn join(
        &self,
        leader: &NodeAddr,
        req: &JoinRequest,
    ) -> Result<Result<JoinResponse, WireError>, PeerError> {
        self.call(&leader.peer, "/internal/join", req, Duration::from_secs(10))
            .await
    }

    /// Sends a heartbeat to the leader.
    pub async fn heartbeat(
        &self,
        leader: &NodeAddr,
        hb: &Heartbeat,
    ) -> Result<Result<HeartbeatAck, WireError>, PeerError> {
        self.call(
            &leader.peer,
            "/internal/heartbeat",
            hb,
            Duration::from_millis(800),
        )
        .await
    }
}

/// openraft's network: one [`PeerLink`] per target node.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    client: PeerClient,
}

impl PeerNetwork {
    /// A network over `client`.
    pub fn new(client: PeerClient) -> Self {
        Self { client }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerLink {
        PeerLink {
            client: self.client.clone(),
            target,
            peer: node.peer.clone(),
        }
    }
}

/// Raft RPCs to one peer.
#[derive(Debug)]
pub struct PeerLink {
    client: PeerClient,
    target: NodeId,
    peer: String,
}

impl PeerLink {
    async fn rpc<B, T, E>(
        &self,
        path: &str,
        body: &B,
        option: &RPCOption,
    ) -> Result<T, RPCError<NodeId, NodeAddr, E>>
    where
        B: Serialize,
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let ttl = option.hard_ttl();
        let answer: Result<Result<T, E>, PeerError> =
            self.client.call(&self.peer, path, body, ttl).await;
        match answer {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(e @ PeerError::Unreachable { .. }) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e @ (PeerError::BadAnswer { .. } | PeerError::Io { .. })) => {
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        self.rpc("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        self.rpc("/raft/vote", &rpc, &option).await
    }
}
