//! Wakes a reconcile loop as soon as a resource it cares about changes, so a new VM is placed
//! and started without waiting for the loop's next tick. The tick stays as the safety net: the
//! loops are level-triggered and a missed wake only costs one tick.

use std::pin::Pin;
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use keel_store::Change;

use crate::member::Member;

type Changes = Pin<Box<dyn Stream<Item = Change> + Send>>;

/// Resolves [`Wake::changed`] when a record of one of `kinds` changes.
pub struct Wake {
    member: Arc<Member>,
    kinds: &'static [&'static str],
    changes: Option<Changes>,
}

impl Wake {
    /// Watches `kinds` from the store's current revision.
    pub fn new(member: Arc<Member>, kinds: &'static [&'static str]) -> Self {
        let mut w = Self {
            member,
            kinds,
            changes: None,
        };
        w.subscribe();
        w
    }

    fn subscribe(&mut self) {
        let since = self.member.store.revision();
        self.changes = match self.member.store.watch(since) {
            Ok(s) => Some(Box::pin(s)),
            Err(e) => {
                tracing::debug!(error = %e, "watching the store failed; the loop falls back to its tick");
                None
            }
        };
    }

    /// Waits for a change of a watched kind and then drains what else is already queued, so a
    /// burst of writes costs one round. Never resolves while the store cannot be watched (the
    /// caller's tick takes over, and the next call subscribes again).
    pub async fn changed(&mut self) {
        if self.changes.is_none() {
            self.subscribe();
        }
        let Some(changes) = self.changes.as_mut() else {
            return futures::future::pending().await;
        };
        loop {
            match changes.next().await {
                Some(c) if self.kinds.contains(&c.kind.as_str()) => break,
                Some(_) => continue,
                None => {
                    // The stream ended (compaction or shutdown): resubscribe on the next call
                    // and let the caller do a full round now.
                    self.changes = None;
                    return;
                }
            }
        }
        while let Some(Some(_)) = changes.next().now_or_never() {}
    }
}

/// Which members run a [`reconcile_loop`]'s rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// Only the Raft leader (cluster-wide decisions: scheduling, maintenance).
    OnLeader,
    /// Every member (converging its own host).
    Everywhere,
}

/// The level-triggered loop every reconciler shares: one `round` every `period` and whenever a
/// record of `kinds` changes, until `shutdown`; a failed round is logged (under `what`) and
/// simply retried by the next one.
pub async fn reconcile_loop<F, Fut>(
    m: Arc<Member>,
    kinds: &'static [&'static str],
    period: std::time::Duration,
    runs: Runs,
    what: &'static str,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    round: F,
) where
    F: Fn(Arc<Member>) -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::error::ApiError>>,
{
    let mut tick = tokio::time::interval(period);
    let mut wake = Wake::new(m.clone(), kinds);
    loop {
        tokio::select! { _ = tick.tick() => {} _ = wake.changed() => {} _ = shutdown.changed() => return }
        if runs == Runs::OnLeader && !m.is_leader() {
            continue;
        }
        if let Err(e) = round(m.clone()).await {
            tracing::debug!(error = %e, "{what} round failed");
        }
    }
}
