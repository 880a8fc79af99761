use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Name;

/// `GET /api/v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// Cluster name.
    pub name: String,
    /// Name of the current leader, if there is one.
    pub leader: Option<String>,
    /// Current Raft term.
    pub term: u64,
    /// Last committed log index seen by the answering node.
    pub committed: u64,
    /// Every member.
    pub members: Vec<Member>,
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Member {
    /// Node name.
    pub name: String,
    /// Raft node id.
    pub id: u64,
    /// Management address.
    pub address: String,
    /// Voter or learner.
    pub role: MemberRole,
    /// Liveness as recorded by the leader.
    pub state: NodeState,
}

/// A member's role in the replicated store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MemberRole {
    /// Votes and counts toward the quorum.
    Voter,
    /// Receives the log but does not vote.
    Learner,
}

/// Liveness of a node as the leader records it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Joined but not yet heard from.
    #[default]
    Joining,
    /// Heartbeats arrive.
    Ready,
    /// Heartbeats stopped arriving.
    NotReady,
}

/// A node asks to join (`POST /api/v1/cluster/join`, authenticated by the join secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Cluster the node expects to join.
    pub cluster: String,
    /// The joining node's name.
    pub name: Name,
    /// The joining node's management address (no prefix).
    pub address: String,
    /// PEM certificate signing request for the node's key.
    pub csr: String,
    /// Random nonce chosen by the joiner, hex.
    pub nonce: String,
    /// HMAC-SHA256 over the other fields, keyed by the join secret, hex.
    pub proof: String,
}

/// The cluster admits a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinResponse {
    /// Raft node id assigned to the node.
    pub id: u64,
    /// Cluster CA certificate, PEM.
    pub ca_cert: String,
    /// The node's certificate signed by the cluster CA, PEM.
    pub cert: String,
    /// HMAC-SHA256 keyed by the join secret over nonce, id, CA and certificate, hex: proves the
    /// answer comes from a holder of the secret.
    pub proof: String,
}

/// `POST /api/v1/cluster/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveNodeRequest {
    /// The node to remove.
    pub name: Name,
}

/// `GET /api/v1/health` (no authentication): what phase this node is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// This node's name (empty before it has one).
    pub node: String,
    /// Lifecycle phase of this node.
    pub phase: NodePhase,
    /// Cluster name, once known.
    pub cluster: Option<String>,
    /// keeld version.
    pub version: String,
}

/// Lifecycle phase of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NodePhase {
    /// No answer file: waiting for the first-boot wizard.
    Setup,
    /// Has an answer file; discovering peers, founding or joining.
    Forming,
    /// A member of a cluster.
    Member,
}
