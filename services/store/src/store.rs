//! [`Store`]: the handle keeld holds. Writes go through Raft; reads go straight to the local
//! read pool.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader, InitializeError, RaftError,
};
use openraft::{ChangeMembers, RaftMetrics, RaftNetworkFactory};

use crate::config::StoreConfig;
use crate::db;
use crate::error::StoreError;
use crate::log_store::LogStore;
use crate::state_machine::StateMachine;
use crate::state_reader::StateReader;
use crate::types::{Change, NodeAddr, NodeId, Proposal, Record, Request, Response};
use crate::{watch, Raft, TypeConfig};

/// A handle on this node's replica of the store. Cheap to clone; all clones share one Raft node.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    node_id: NodeId,
    reader: Arc<StateReader>,
    write_timeout: Duration,
}

impl Store {
    /// Opens the store in `cfg.dir` (creating it on first use) and starts its Raft node.
    /// After a restart it resumes from disk: vote, log, applied state and snapshot.
    pub async fn open<N: RaftNetworkFactory<TypeConfig>>(
        cfg: StoreConfig,
        network: N,
    ) -> Result<Store, StoreError> {
        let raft_config = Arc::new(cfg.raft_config()?);
        let dir = cfg.dir.clone();
        let keep_changes = cfg.keep_changes;
        let (log, sm, reader) = db::spawn_blocking("opening the store", move || {
            std::fs::create_dir_all(&dir).map_err(StoreError::io("create", &dir))?;
            let log = LogStore::open(&dir.join("raft.db"))?;
            let (sm, reader) = StateMachine::open(&dir, keep_changes)?;
            Ok((log, sm, reader))
        })
        .await?;
        let raft = Raft::new(cfg.node_id, raft_config, network, log, sm)
            .await
            .map_err(fatal)?;
        tracing::info!(
            node_id = cfg.node_id,
            dir = %cfg.dir.display(),
            revision = reader.revision(),
            "store open"
        );
        Ok(Store {
            inner: Arc::new(Inner {
                raft,
                node_id: cfg.node_id,
                reader,
                write_timeout: cfg.write_timeout,
            }),
        })
    }

    /// The Raft node, for the peer RPC server (`append_entries`, `vote`, `install_snapshot`)
    /// and for tests (`trigger()`).
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// Whether this node has a membership (founded a cluster, or was added to one).
    pub async fn is_initialized(&self) -> Result<bool, StoreError> {
        self.inner.raft.is_initialized().await.map_err(fatal)
    }

    /// Founds a cluster with this node as its single voter.
    pub async fn initialize(&self, me: NodeAddr) -> Result<(), StoreError> {
        let members = BTreeMap::from([(self.inner.node_id, me)]);
        match self.inner.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(node_id = self.inner.node_id, "cluster founded");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Err(StoreError::AlreadyInitialized)
            }
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(StoreError::Corrupt {
                    detail: format!("initializing without this node: {e}"),
                })
            }
            Err(RaftError::Fatal(f)) => Err(fatal(f)),
        }
    }

    /// Proposes `req` and waits until it is committed and applied. Leader only: elsewhere it
    /// answers [`StoreError::ForwardToLeader`]. After `write_timeout` it gives up with
    /// [`StoreError::NoQuorum`], but the entry may still commit later.
    pub async fn write(&self, req: Request) -> Result<Response, StoreError> {
        let proposal = Proposal {
            at_ms: now_ms(),
            request: req,
        };
        let limit = self.inner.write_timeout;
        match tokio::time::timeout(limit, self.inner.raft.client_write(proposal)).await {
            Err(_) => Err(StoreError::NoQuorum {
                step: "writing",
                detail: format!("not committed within {limit:?}"),
            }),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(e)) => Err(self.client_write_error(e).await),
        }
    }

    /// A linearizable read barrier: once it returns, local reads reflect every write committed
    /// before it was called. Leader only, like `write`.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        let limit = self.inner.write_timeout;
        match tokio::time::timeout(limit, self.inner.raft.ensure_linearizable()).await {
            Err(_) => Err(StoreError::NoQuorum {
                step: "confirming leadership",
                detail: format!("no majority answered within {limit:?}"),
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(self.forward(f).await)
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                Err(StoreError::NoQuorum {
                    step: "confirming leadership",
                    detail: q.to_string(),
                })
            }
            Ok(Err(RaftError::Fatal(f))) => Err(fatal(f)),
        }
    }

    /// The record `kind/name` as this replica has it (call `barrier` first for a linearizable
    /// read).
    pub fn get(&self, kind: &str, name: &str) -> Result<Option<Record>, StoreError> {
        self.inner.reader.get(kind, name)
    }

    /// Every record of `kind` on this replica, sorted by name.
    pub fn list(&self, kind: &str) -> Result<Vec<Record>, StoreError> {
        self.inner.reader.list(kind)
    }

    /// The revision of the last change applied on this replica.
    pub fn revision(&self) -> u64 {
        self.inner.reader.revision()
    }

    /// Every change with a revision above `since`: first from the change history, then live,
    /// with no gaps or duplicates. Fails with [`StoreError::Compacted`] if the history no longer
    /// reaches back to `since`. The stream ends (rather than skipping) if it falls behind
    /// compaction or the store shuts down; watch again from the last revision seen.
    pub fn watch(
        &self,
        since: u64,
    ) -> Result<impl Stream<Item = Change> + Send + 'static, StoreError> {
        watch::watch(Arc::clone(&self.inner.reader), since)
    }

    /// Adds `id` as a learner and waits until it has caught up with the log. Waits as long as
    /// it takes; wrap it in a timeout (the learner stays added if the wait is abandoned).
    pub async fn add_learner(&self, id: NodeId, node: NodeAddr) -> Result<(), StoreError> {
        match self.inner.raft.add_learner(id, node, true).await {
            Ok(_) => {
                tracing::info!(learner = id, "learner added and caught up");
                Ok(())
            }
            Err(e) => Err(self.client_write_error(e).await),
        }
    }

    /// Makes `voters` the voter set; members not in it stay on as learners.
    pub async fn change_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), StoreError> {
        let changes = ChangeMembers::ReplaceAllVoters(voters.clone());
        match self.inner.raft.change_membership(changes, true).await {
            Ok(_) => {
                tracing::info!(voters = ?voters, "voters changed");
                Ok(())
            }
            Err(e) => Err(self.client_write_error(e).await),
        }
    }

    /// Demotes `id` if it is a voter, then removes it from the membership. Removing a node that
    /// is not a member succeeds.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), StoreError> {
        let membership = self.inner.raft.metrics().borrow().membership_config.clone();
        let is_voter = membership.membership().voter_ids().any(|v| v == id);
        let is_member = membership.nodes().any(|(n, _)| *n == id);
        if is_voter {
            let demote = ChangeMembers::RemoveVoters(BTreeSet::from([id]));
            if let Err(e) = self.inner.raft.change_membership(demote, true).await {
                return Err(self.client_write_error(e).await);
            }
        }
        if is_member {
            let remove = ChangeMembers::RemoveNodes(BTreeSet::from([id]));
            if let Err(e) = self.inner.raft.change_membership(remove, false).await {
                return Err(self.client_write_error(e).await);
            }
        }
        tracing::info!(node = id, "node removed from the cluster");
        Ok(())
    }

    /// Raft's view of the cluster (leader, term, membership, replication progress).
    pub fn metrics(&self) -> tokio::sync::watch::Receiver<RaftMetrics<NodeId, NodeAddr>> {
        self.inner.raft.metrics()
    }

    /// Stops the Raft node and ends every watch stream. Other clones of this handle then answer
    /// [`StoreError::Stopped`] for Raft operations.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        self.inner.reader.close();
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|source| StoreError::Task {
                step: "stopping raft",
                source,
            })?;
        tracing::info!(node_id = self.inner.node_id, "store stopped");
        Ok(())
    }

    async fn client_write_error(
        &self,
        e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>,
    ) -> StoreError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => self.forward(f).await,
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                StoreError::Membership {
                    source: Box::new(e),
                }
            }
            RaftError::Fatal(f) => fatal(f),
        }
    }

    /// `ForwardToLeader`, except on a node that has no membership at all, where there is no
    /// leader to forward to.
    async fn forward(&self, f: ForwardToLeader<NodeId, NodeAddr>) -> StoreError {
        if f.leader_id.is_none() {
            match self.inner.raft.is_initialized().await {
                Ok(false) => return StoreError::NotInitialized,
                Ok(true) => {}
                Err(e) => return fatal(e),
            }
        }
        StoreError::ForwardToLeader {
            leader: f.leader_id.zip(f.leader_node),
        }
    }
}

fn fatal(f: Fatal<NodeId>) -> StoreError {
    match f {
        Fatal::Stopped => StoreError::Stopped,
        source @ (Fatal::StorageError(_) | Fatal::Panicked) => StoreError::Fatal {
            source: Box::new(source),
        },
    }
}

/// The leader's wall clock, carried in the log entry (see [`Proposal`]).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
