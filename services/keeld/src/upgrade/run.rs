//! The loops that execute the pure upgrade steps of [`crate::upgrade`]:
//!
//! ```text
//!   leader (every 5 s and on every upgrades/nodes change):
//!     oldest unfinished upgrade ─▶ leader_step ─▶ effects (node maintenance on/off, the
//!     node API's own mechanism) ─▶ status written with compare-and-set
//!   every node (same trigger), for its own entry:
//!     node_step ─▶ Install: copy the bundle if missing, keel-update writes the inactive slot,
//!                  record rebooting (boot id), systemctl reboot
//!                  Reboot: reboot again (crashed in between) · Bless: keel-update bless,
//!                  record blessed · ReportRolledBack: record rolled-back
//! ```
//! Each record write re-reads the record and applies the node's change only while its entry
//! is still in the phase the decision was made in, so a stale decision changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_model::{NodeState, NodeUpgradePhase, Upgrade};
use keel_store::{Record, Request, Response};
use tracing::{info, info_span, warn, Instrument};

use super::bundles;
use super::host::UpgradeHost;
use super::{
    image_version_of_os, leader_step, node_record, node_step, Effect, LocalView, NodeAction,
    NodeView, KIND,
};
use crate::api::now_unix;
use crate::error::ApiError;
use crate::member::{decode, encode, kinds, node_of, Member};
use crate::wake::{reconcile_loop, Runs};

/// How often the loops run without a change to wake them.
pub const PERIOD: Duration = Duration::from_secs(5);
/// How long a node keeps trying to copy the bundle before its entry fails.
pub const FETCH_PATIENCE: u64 = 10 * 60;
/// Bundles no unfinished upgrade needs are removed after this long.
pub const BUNDLE_KEEP: Duration = Duration::from_secs(3600);

/// An upgrade record with the store's metadata filled in.
pub fn upgrade_of(rec: &Record) -> Result<Upgrade, ApiError> {
    let mut u: Upgrade = decode(rec)?;
    u.metadata.name = rec.name.clone();
    u.metadata.uid = rec.uid.clone();
    u.metadata.version = rec.version;
    u.metadata.created = rec.created.clone();
    Ok(u)
}

/// Every upgrade, oldest first (names sort by creation time).
pub fn upgrades(m: &Member) -> Result<Vec<Upgrade>, ApiError> {
    let mut v = m
        .list(KIND)?
        .iter()
        .map(upgrade_of)
        .collect::<Result<Vec<_>, _>>()?;
    v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(v)
}

/// What the upgrade decisions need of every node, by name.
pub fn node_views(m: &Member) -> Result<BTreeMap<String, NodeView>, ApiError> {
    let mut out = BTreeMap::new();
    for rec in m.list(kinds::NODES)? {
        let n = node_of(&rec)?;
        let maint = n.status.maintenance.clone();
        out.insert(
            n.metadata.name.clone(),
            NodeView {
                ready: n.status.state == NodeState::Ready,
                maintenance: n.spec.maintenance,
                maintenance_phase: maint.as_ref().map(|s| s.phase),
                maintenance_message: maint.map(|s| s.message).unwrap_or_default(),
                image_version: image_version_of_os(&n.status.versions.os),
            },
        );
    }
    Ok(out)
}

/// Peer addresses (`name`, `address:port`) to copy a bundle from: the source first.
fn holders(m: &Member, source: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut v: Vec<(String, String)> = m
        .list(kinds::NODES)?
        .iter()
        .filter_map(|r| node_of(r).ok())
        .filter(|n| n.metadata.name != m.identity.name && !n.status.address.is_empty())
        .map(|n| {
            (
                n.metadata.name.clone(),
                format!("{}:{}", n.status.address, crate::PEER_PORT),
            )
        })
        .collect();
    v.sort_by_key(|(n, _)| n != source);
    Ok(v)
}

/// The leader's loop.
pub async fn leader_loop(m: Arc<Member>, shutdown: tokio::sync::watch::Receiver<bool>) {
    reconcile_loop(
        m,
        &[KIND, kinds::NODES],
        PERIOD,
        Runs::OnLeader,
        "upgrade leader",
        shutdown,
        |m| async move { leader_round(&m).await },
    )
    .await
}

/// One leader round: the oldest unfinished upgrade moves one step.
pub async fn leader_round(m: &Member) -> Result<(), ApiError> {
    let Some(u) = upgrades(m)?
        .into_iter()
        .find(|u| !u.status.phase.is_final())
    else {
        return Ok(());
    };
    let span = info_span!("upgrade", name = %u.metadata.name);
    async {
        let views = node_views(m)?;
        let plan = leader_step(&u.spec, &u.status, &views, now_unix());
        for e in &plan.effects {
            let (node, action) = match e {
                Effect::MaintenanceOn(n) => (n, "maintenance"),
                Effect::MaintenanceOff(n) => (n, "maintenance-exit"),
            };
            match crate::lifecycle::node_action(m, node, action).await {
                Ok(_) => info!(node = %node, action, "upgrade: node maintenance"),
                // A node that is gone has no maintenance to end; the status says it left.
                Err(ApiError::NotFound(_)) if matches!(e, Effect::MaintenanceOff(_)) => {}
                Err(err) => return Err(err),
            }
        }
        if plan.status == u.status {
            return Ok(());
        }
        let mut next = u.clone();
        next.status = plan.status;
        match m
            .write(Request::Put {
                kind: KIND.into(),
                name: u.metadata.name.clone(),
                value: encode(&stored(&next))?,
                expected_version: Some(u.metadata.version),
            })
            .await?
        {
            Response::Written(_) => {
                info!(phase = ?next.status.phase, message = %next.status.message, "upgrade status");
                Ok(())
            }
            // A node wrote its entry meanwhile: the next round decides from the new record.
            other => {
                tracing::debug!(?other, "upgrade status not written");
                Ok(())
            }
        }
    }
    .instrument(span)
    .await
}

/// The record as stored: the metadata is the store's.
pub fn stored(u: &Upgrade) -> Upgrade {
    let mut s = u.clone();
    s.metadata = keel_model::Metadata {
        name: u.metadata.name.clone(),
        ..Default::default()
    };
    s
}

/// Every node's loop for its own part of upgrades.
pub async fn node_loop(
    m: Arc<Member>,
    host: Arc<dyn UpgradeHost>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    reconcile_loop(
        m,
        &[KIND, kinds::NODES],
        PERIOD,
        Runs::Everywhere,
        "upgrade node",
        shutdown,
        move |m| {
            let host = host.clone();
            async move { node_round(&m, host).await }
        },
    )
    .await
}

async fn blocking<T: Send + 'static>(
    host: &Arc<dyn UpgradeHost>,
    f: impl FnOnce(&dyn UpgradeHost) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let h = host.clone();
    tokio::task::spawn_blocking(move || f(h.as_ref()))
        .await
        .map_err(|e| ApiError::Internal(format!("upgrade host action: {e}")))
}

/// One round of this node's part.
pub async fn node_round(m: &Member, host: Arc<dyn UpgradeHost>) -> Result<(), ApiError> {
    let me = m.identity.name.clone();
    let all = upgrades(m)?;
    let cfg = bundles::config();
    let needed: Vec<String> = all
        .iter()
        .filter(|u| !u.status.phase.is_final())
        .map(|u| u.spec.sha256.clone())
        .collect();
    {
        let cfg = cfg.clone();
        let needed = needed.clone();
        let _ = tokio::task::spawn_blocking(move || {
            bundles::collect_garbage(&cfg, &needed, BUNDLE_KEEP)
        })
        .await;
    }
    let Some(u) = all
        .into_iter()
        .find(|u| !u.status.phase.is_final() && u.status.nodes.iter().any(|n| n.node == me))
    else {
        return Ok(());
    };
    let healthy = m
        .get(kinds::NODES, &me)?
        .map(|r| node_of(&r))
        .transpose()?
        .is_some_and(|n| n.status.state == NodeState::Ready);
    let local = blocking(&host, move |h| LocalView {
        boot_id: h.boot_id(),
        version: h.running_version(),
        healthy,
    })
    .await?;
    let action = node_step(&u.status, &u.spec, &me, &local);
    if action == NodeAction::Nothing {
        return Ok(());
    }
    let span = info_span!("upgrade-node", name = %u.metadata.name, ?action);
    async {
        let entry_phase = u
            .status
            .nodes
            .iter()
            .find(|n| n.node == me)
            .map(|n| n.phase)
            .unwrap_or_default();
        let record = |phase: NodeUpgradePhase, message: String| {
            record_entry(m, &u.metadata.name, &me, entry_phase, phase, &local, message)
        };
        match action {
            NodeAction::Install => {
                if let Err(msg) = blocking(&host, |h| h.check()).await? {
                    warn!(%msg, "this node cannot be upgraded");
                    return record(NodeUpgradePhase::Failed, msg).await;
                }
                let peers = holders(m, &u.spec.source)?;
                let path = match bundles::fetch(m, &cfg, &u.spec.sha256, &peers).await {
                    Ok(p) => p,
                    Err(msg) => {
                        let since = u
                            .status
                            .nodes
                            .iter()
                            .find(|n| n.node == me)
                            .map(|n| n.since)
                            .unwrap_or(0);
                        warn!(%msg, "copying the bundle failed");
                        if now_unix().saturating_sub(since) > FETCH_PATIENCE {
                            return record(NodeUpgradePhase::Failed, msg).await;
                        }
                        return record(
                            NodeUpgradePhase::Installing,
                            format!("copying the bundle (retrying): {msg}"),
                        )
                        .await;
                    }
                };
                let (tries, allow) = (u.spec.tries, u.spec.allow_downgrade);
                let done = blocking(&host, move |h| h.install(&path, tries, allow)).await?;
                match done {
                    Ok(what) => {
                        info!(%what, "inactive slot written; rebooting");
                        record(
                            NodeUpgradePhase::Rebooting,
                            format!("{what}; rebooting into it"),
                        )
                        .await?;
                        reboot(&host).await
                    }
                    Err(msg) => {
                        warn!(%msg, "writing the inactive slot failed");
                        record(NodeUpgradePhase::Failed, msg).await
                    }
                }
            }
            NodeAction::Reboot => reboot(&host).await,
            NodeAction::Bless => match blocking(&host, |h| h.bless()).await? {
                Ok(what) => {
                    info!(%what, "upgraded; boot blessed");
                    record(
                        NodeUpgradePhase::Blessed,
                        format!("runs {}; {what}", local.version),
                    )
                    .await
                }
                // Tried again next round: the entry stays in `rebooting` (its boot id is the
                // old one, so this is still a bless). If it never works, keel-boot-check
                // reboots the unblessed slot and the boot loader falls back, which the node
                // then reports as rolled back.
                Err(msg) => {
                    warn!(%msg, "blessing the boot failed; trying again");
                    Ok(())
                }
            },
            NodeAction::ReportRolledBack => {
                warn!(version = %local.version, "came back on the old slot");
                record(
                    NodeUpgradePhase::RolledBack,
                    format!(
                        "came back on {} instead of {}: the new slot did not become healthy within its boot tries",
                        local.version, u.spec.version
                    ),
                )
                .await
            }
            NodeAction::WaitHealthy | NodeAction::Nothing => Ok(()),
        }
    }
    .instrument(span)
    .await
}

async fn reboot(host: &Arc<dyn UpgradeHost>) -> Result<(), ApiError> {
    match blocking(host, |h| h.reboot()).await? {
        Ok(()) => Ok(()),
        Err(msg) => Err(ApiError::Internal(msg)),
    }
}

/// Writes this node's outcome into its entry, only while the entry is still in `from`.
async fn record_entry(
    m: &Member,
    upgrade: &str,
    me: &str,
    from: NodeUpgradePhase,
    phase: NodeUpgradePhase,
    local: &LocalView,
    message: String,
) -> Result<(), ApiError> {
    let now = now_unix();
    crate::member::update_record(m, KIND, "upgrade", upgrade, upgrade_of, |u| {
        if u.status.phase.is_final() {
            return Ok(false);
        }
        let Some(entry) = u.status.nodes.iter().find(|n| n.node == me) else {
            return Ok(false);
        };
        if entry.phase != from || (entry.phase == phase && entry.message == message) {
            return Ok(false);
        }
        node_record(&mut u.status, me, phase, local, now, message.clone());
        u.metadata = keel_model::Metadata {
            name: u.metadata.name.clone(),
            ..Default::default()
        };
        Ok(true)
    })
    .await?;
    Ok(())
}
