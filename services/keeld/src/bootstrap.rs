//! The founder's bootstrap: the records a new cluster needs (CA, token key, join secret, admin
//! user, node-id counter, the founder's Node). Level-triggered and idempotent: it runs at every
//! start of the founder until the records exist, so a crash between initialising the store and
//! writing them is repaired on restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_model::{AnswerFile, NodeState};
use keel_store::{NodeAddr, Request};
use tracing::{info, warn};

use crate::auth::{hash_password, UserRecord};
use crate::member::{cluster_records as rec, encode, kinds, new_node, Member};
use crate::pki::CaMaterial;

/// The CA key file the founder keeps until the CA is in the store.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Ensures the bootstrap records exist; returns once they do.
pub async fn run(member: Arc<Member>, tls_dir: PathBuf, answer: Option<AnswerFile>, me: NodeAddr) {
    loop {
        match step(&member, &tls_dir, answer.as_ref(), &me).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "bootstrap not done yet"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn step(
    member: &Member,
    tls_dir: &std::path::Path,
    answer: Option<&AnswerFile>,
    me: &NodeAddr,
) -> anyhow::Result<bool> {
    if member.get(kinds::CLUSTER, rec::INFO)?.is_some() {
        let _ = std::fs::remove_file(tls_dir.join(CA_KEY_FILE));
        return Ok(true);
    }
    if !member.is_leader() {
        return Ok(false);
    }
    let Some(answer) = answer else {
        anyhow::bail!(
            "the cluster records are missing and there is no answer file to recreate them from"
        );
    };
    let ca = CaMaterial {
        cert_pem: std::fs::read_to_string(tls_dir.join("ca.pem"))?,
        key_pem: std::fs::read_to_string(tls_dir.join(CA_KEY_FILE))?,
    };
    let password_hash = {
        let pw = answer.admin.password.clone();
        tokio::task::spawn_blocking(move || hash_password(&pw)).await??
    };
    let token_key = crate::join::hex(&rand::random::<[u8; 32]>());
    let mut node = new_node(
        &member.identity.name,
        member.identity.id,
        &member.identity.address,
    );
    node.status.state = NodeState::Ready;
    node.status.last_heartbeat = Some(crate::now_rfc3339());
    let mut inventory = crate::inventory::collect();
    inventory.id = node.status.id;
    inventory.address = node.status.address.clone();
    inventory.api = me.api.clone();
    inventory.state = NodeState::Ready;
    inventory.last_heartbeat = node.status.last_heartbeat.clone();
    node.status = inventory;
    let create = |kind: &str, name: &str, value: serde_json::Value| Request::Create {
        kind: kind.into(),
        name: name.into(),
        value,
        idempotency_key: Some(format!("bootstrap/{kind}/{name}")),
    };
    // The info record goes last: its presence means the bootstrap is complete.
    let batch = vec![
        create(kinds::CLUSTER, rec::CA, encode(&ca)?),
        create(
            kinds::CLUSTER,
            rec::TOKEN_KEY,
            serde_json::json!({ "key": token_key }),
        ),
        create(
            kinds::CLUSTER,
            rec::JOIN,
            serde_json::json!({ "secret": answer.cluster.join_secret }),
        ),
        create(
            kinds::CLUSTER,
            rec::NEXT_ID,
            serde_json::json!({ "next": member.identity.id + 1 }),
        ),
        create(
            kinds::USERS,
            "admin",
            encode(&UserRecord {
                password_hash,
                role: "admin".into(),
            })?,
        ),
        create(kinds::NODES, &member.identity.name, encode(&node)?),
        create(
            kinds::CLUSTER,
            rec::INFO,
            serde_json::json!({ "name": member.identity.cluster, "created": crate::now_rfc3339() }),
        ),
    ];
    member.write_ok(Request::Batch(batch)).await?;
    info!(cluster = %member.identity.cluster, "cluster bootstrapped: CA, admin user and founder recorded");
    let _ = std::fs::remove_file(tls_dir.join(CA_KEY_FILE));
    Ok(true)
}
