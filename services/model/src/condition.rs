//! [`Condition`]: one observed fact about a resource, with why and since when.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One observed fact about a resource ("Scheduled is false because no node has 4 GiB
/// free"). Conditions are keyed by `type`; a resource has at most one of each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Condition {
    /// What the condition is about, in CamelCase (see the constants, e.g. [`Condition::SCHEDULED`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// Why, as a CamelCase word a program can match on (e.g. `Unschedulable`).
    #[serde(default)]
    pub reason: String,
    /// Why, for people.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed, RFC 3339.
    #[serde(default)]
    pub last_transition: String,
}

/// Whether a condition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConditionStatus {
    /// It holds.
    True,
    /// It does not hold.
    False,
    /// Not known (e.g. the node stopped reporting).
    Unknown,
}

impl Condition {
    /// The VM has a node (`False` with reason `Unschedulable` and the scheduler's reason).
    pub const SCHEDULED: &'static str = "Scheduled";
    /// The guest is paused (the phase stays `running`).
    pub const PAUSED: &'static str = "Paused";
    /// qemu-guest-agent answers inside the guest.
    pub const GUEST_AGENT: &'static str = "GuestAgentConnected";
    /// The VM's images and volumes are on its node and ready.
    pub const STORAGE_READY: &'static str = "StorageReady";

    /// A condition of `kind`, changing now (`now` is RFC 3339, passed in so callers and
    /// tests control time).
    pub fn new(
        kind: impl Into<String>,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
        now: impl Into<String>,
    ) -> Self {
        Self {
            kind: kind.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            last_transition: now.into(),
        }
    }
}

/// Finds the condition of `kind`.
pub fn find_condition<'a>(conditions: &'a [Condition], kind: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.kind == kind)
}

/// Sets `new` in `conditions`, replacing the one of the same type. When the status does not
/// change, the old `last_transition` is kept (only reason and message are updated), so a
/// reconciler that sets the same condition every round does not churn the store. Returns
/// whether anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.kind == new.kind) {
        Some(old) if old.status == new.status => {
            let changed = old.reason != new.reason || old.message != new.message;
            old.reason = new.reason;
            old.message = new.message;
            changed
        }
        Some(old) => {
            *old = new;
            true
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_keeps_transition_time_while_status_holds() {
        let mut c = Vec::new();
        let t1 = "2024-01-01T00:00:00Z";
        let t2 = "2024-01-01T00:01:00Z";
        assert!(set_condition(
            &mut c,
            Condition::new(
                Condition::SCHEDULED,
                ConditionStatus::False,
                "Unschedulable",
                "a",
                t1
            )
        ));
        assert!(!set_condition(
            &mut c,
            Condition::new(
                Condition::SCHEDULED,
                ConditionStatus::False,
                "Unschedulable",
                "a",
                t2
            )
        ));
        assert_eq!(c[0].last_transition, t1);
        assert!(set_condition(
            &mut c,
            Condition::new(
                Condition::SCHEDULED,
                ConditionStatus::False,
                "Unschedulable",
                "b",
                t2
            )
        ));
        assert_eq!(
            (c[0].message.as_str(), c[0].last_transition.as_str()),
            ("b", t1)
        );
        assert!(set_condition(
            &mut c,
            Condition::new(
                Condition::SCHEDULED,
                ConditionStatus::True,
                "Scheduled",
                "",
                t2
            )
        ));
        assert_eq!(c.len(), 1);
        assert_eq!(
            find_condition(&c, Condition::SCHEDULED)
                .unwrap()
                .last_transition,
            t2
        );
        let json = serde_json::to_value(&c[0]).unwrap();
        assert_eq!(json["type"], "Scheduled");
        assert_eq!(json["status"], "true");
    }
}
