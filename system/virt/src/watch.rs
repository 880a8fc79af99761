//! [`StateWatcher`]: domain lifecycle events by polling.
//!
//! Each [`poll`](StateWatcher::poll) lists the domains and reports what changed since the last
//! one. Level-triggered consumers (Keel's reconcilers) need nothing more, and a missed poll
//! loses no information: the next one reports the net change.
//!
//! Rejected for now: libvirt's own lifecycle callbacks (`virConnectDomainEventRegisterAny`).
//! They need a process-wide libvirt event loop thread and raw FFI callbacks that the `virt`
//! crate does not wrap, and the reconcilers would still have to poll to recover from a dropped
//! connection. They can be added behind this same type when latency demands it.

use std::collections::BTreeMap;

use crate::{DomainInfo, DomainState, Hypervisor, HypervisorError};

/// A change seen between two polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainEvent {
    /// A domain appeared.
    Appeared {
        /// The domain as first seen.
        domain: DomainInfo,
    },
    /// A domain's state changed.
    StateChanged {
        /// Domain name.
        name: String,
        /// Previous state.
        from: DomainState,
        /// New state.
        to: DomainState,
    },
    /// A domain disappeared (undefined, migrated away, or a transient domain stopped).
    Vanished {
        /// Domain name.
        name: String,
        /// Its last seen state.
        last: DomainState,
    },
}

/// Remembers the last listing and reports differences.
#[derive(Debug, Default)]
pub struct StateWatcher {
    last: BTreeMap<String, DomainInfo>,
}

impl StateWatcher {
    /// A watcher that has seen nothing: the first poll reports every domain as appeared.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lists domains and returns the events since the previous poll, in name order.
    pub fn poll(
        &mut self,
        hypervisor: &(impl Hypervisor + ?Sized),
    ) -> Result<Vec<DomainEvent>, HypervisorError> {
        let now: BTreeMap<String, DomainInfo> = hypervisor
            .list()?
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect();
        let mut events = Vec::new();
        for (name, info) in &now {
            match self.last.get(name) {
                None => events.push(DomainEvent::Appeared {
                    domain: info.clone(),
                }),
                Some(prev) if prev.uuid != info.uuid => {
                    // Same name, another domain: the old one went, a new one came.
                    events.push(DomainEvent::Vanished {
                        name: name.clone(),
                        last: prev.state,
                    });
                    events.push(DomainEvent::Appeared {
                        domain: info.clone(),
                    });
                }
                Some(prev) if prev.state != info.state => events.push(DomainEvent::StateChanged {
                    name: name.clone(),
                    from: prev.state,
                    to: info.state,
                }),
                Some(_) => {}
            }
        }
        for (name, prev) in &self.last {
            if !now.contains_key(name) {
                events.push(DomainEvent::Vanished {
                    name: name.clone(),
                    last: prev.state,
                });
            }
        }
        events.sort_by(|a, b| event_name(a).cmp(event_name(b)));
        self.last = now;
        Ok(events)
    }
}

fn event_name(e: &DomainEvent) -> &str {
    match e {
        DomainEvent::Appeared { domain } => &domain.name,
        DomainEvent::StateChanged { name, .. } | DomainEvent::Vanished { name, .. } => name,
    }
}
