//! The peer server's routes (port 7443, mutual TLS): see [`crate::peer`] for the client side.

use std::convert::Infallible;
use std::sync::Arc;

use keel_model::{JoinRequest, RemoveNodeRequest};
use keel_store::{NodeId, Request, Response, StoreError, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use warp::{Filter, Rejection, Reply};

use crate::member::{api_to_wire, Member};
use crate::peer::{Heartbeat, WireError};

fn json_body<T: DeserializeOwned + Send>() -> impl Filter<Extract = (T,), Error = Rejection> + Clone
{
    warp::body::content_length_limit(256 * 1024 * 1024).and(warp::body::json())
}

fn with(member: Arc<Member>) -> impl Filter<Extract = (Arc<Member>,), Error = Infallible> + Clone {
    warp::any().map(move || member.clone())
}

fn not_leader(e: StoreError) -> WireError {
    match e {
        StoreError::ForwardToLeader { leader } => WireError::NotLeader { leader },
        StoreError::NoQuorum { .. } => WireError::NoQuorum(e.to_string()),
        other => WireError::Internal(other.to_string()),
    }
}

/// All peer routes.
pub fn routes(
    member: Arc<Member>,
    host: Arc<crate::host::Host>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    // Image copies between nodes stream the verified file (warp refuses paths leaving the dir).
    let image_files = warp::path!("internal" / "images" / ..)
        .and(warp::get())
        .and(warp::fs::dir(host.pool.images_dir()));
    let append = warp::path!("raft" / "append")
        .and(warp::post())
        .and(with(member.clone()))
        .and(json_body::<AppendEntriesRequest<TypeConfig>>())
        .then(|m: Arc<Member>, req| async move {
            warp::reply::json(&m.store.raft().append_entries(req).await)
        });
    let vote = warp::path!("raft" / "vote")
        .and(warp::post())
        .and(with(member.clone()))
        .and(json_body::<VoteRequest<NodeId>>())
        .then(
            |m: Arc<Member>, req| async move { warp::reply::json(&m.store.raft().vote(req).await) },
        );
    let snapshot = warp::path!("raft" / "snapshot")
        .and(warp::post())
        .and(with(member.clone()))
        .and(json_body::<InstallSnapshotRequest<TypeConfig>>())
        .then(|m: Arc<Member>, req| async move {
            warp::reply::json(&m.store.raft().install_snapshot(req).await)
        });
    let write = warp::path!("internal" / "write")
        .and(warp::post())
        .and(with(member.clone()))
        .and(json_body::<Request>())
        .then(|m: Arc<Member>, req: Request| async move {
            let r: Result<Response, WireError> = m.store.write(req).await.map_err(not_leader);
            warp::reply::json(&r)
        });
    let read_index = warp::path!("internal" / "read-index")
        .and(warp::post())
        .and(with(member.clone()))
        .then(|m: Arc<Member>| async move {
            let r: Result<u64, WireError> = match m.store.raft().ensure_linearizable().await {
                Ok(log_id) => Ok(log_id.map(|l| l.index).unwrap_or(0)),
                Err(e) => Err(match e.forward_to_leader() {
                    Some(f) => WireError::NotLeader {
                        leader: f.leader_id.zip(f.leader_node.clone()),
                    },
                    None => WireError::NoQuorum(e.to_string()),
                }),
            };
            warp::reply::json(&r)
        });
    let join = warp::path!("internal" / "join")
        .and(warp::post())
        .and(with(member.clone()))
        .and(json_body::<JoinRequest>())
        .then(|m: Arc<Member>, req: JoinRequest| async move {
            let r = m.admit(&req).await.map_err(api_to_wire);
            warp::reply::json(&r)
        });
    let remove = warp::path!("internal" / "remove")
        .and(warp::post())
        .and(with(member.clone()))
        .and(json_body::<RemoveNodeRequest>())
        .then(|m: Arc<Member>, req: RemoveNodeRequest| async move {
            let r = crate::api::remove_node_local(&m, req.name.as_str())
                .await
                .map_err(api_to_wire);
            warp::reply::json(&r)
        });
    let heartbeat = warp::path!("internal" / "heartbeat")
        .and(warp::post())
        .and(with(member))
        .and(json_body::<Heartbeat>())
        .then(|m: Arc<Member>, hb: Heartbeat| async move {
            let r: Result<_, WireError> = if m.is_leader() {
                Ok(crate::leader::receive(&m, hb))
            } else {
                Err(WireError::NotLeader { leader: m.leader() })
            };
            warp::reply::json(&r)
        });
    append
        .or(image_files)
        .or(vote)
        .or(snapshot)
        .or(write)
        .or(read_index)
        .or(join)
        .or(remove)
        .or(heartbeat)
        .or(crate::console::peer_routes(host))
        .or(crate::upgrade::bundles::peer_route())
        .recover(|r: Rejection| async move {
            Ok::<_, Infallible>(warp::reply::with_status(
                format!("{r:?}"),
                warp::http::StatusCode::BAD_REQUEST,
            ))
        })
}
