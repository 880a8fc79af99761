//! Cluster formation, decided without I/O (H7): given what discovery has seen, should this node
//! wait, found the cluster, or join it?
//!
//! The rule is deterministic so that no two nodes found at once: a node founds only if no
//! member of its cluster is announcing itself, at least `expected_nodes` unconfigured nodes of
//! the cluster are visible, it has the lowest name among them, and that view has been stable
//! for a settle period. Everyone else joins a member as soon as one announces itself.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// What a node announces on the management network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon {
    /// Protocol version.
    pub v: u32,
    /// Cluster name the node belongs to or wants to form.
    pub cluster: String,
    /// Node name.
    pub name: String,
    /// Management address.
    pub address: String,
    /// Nodes the answer file expects.
    pub expected: u32,
    /// True once the node is a member of a formed cluster.
    pub member: bool,
}

/// Beacon protocol version.
pub const BEACON_VERSION: u32 = 1;

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep listening.
    Wait {
        /// Why, for the log and the health endpoint.
        reason: String,
    },
    /// Create the cluster with this node as its only voter.
    Found,
    /// Ask one of these members (addresses, in order) to admit this node.
    Join {
        /// Addresses of members.
        via: Vec<String>,
    },
}

/// Formation state of one node.
#[derive(Debug)]
pub struct Formation {
    me: String,
    cluster: String,
    expected: u32,
    settle_ms: u64,
    view: BTreeSet<String>,
    stable_since: u64,
}

impl Formation {
    /// A node named `me` that wants to form `cluster` of `expected` nodes; the view must stay
    /// unchanged for `settle_ms` before it founds.
    pub fn new(me: &str, cluster: &str, expected: u32, settle_ms: u64) -> Self {
        Self {
            me: me.to_string(),
            cluster: cluster.to_string(),
            expected,
            settle_ms,
            view: BTreeSet::new(),
            stable_since: 0,
        }
    }

    /// Decides from the beacons seen at time `now_ms` (any monotonic clock in milliseconds).
    pub fn step(&mut self, now_ms: u64, beacons: &[Beacon]) -> Decision {
        let ours = beacons
            .iter()
            .filter(|b| b.cluster == self.cluster && b.name != self.me);
        let mut members: Vec<&Beacon> = ours.clone().filter(|b| b.member).collect();
        if !members.is_empty() {
            members.sort_by(|a, b| a.name.cmp(&b.name));
            return Decision::Join {
                via: members.iter().map(|b| b.address.clone()).collect(),
            };
        }
        let mut view: BTreeSet<String> =
            ours.filter(|b| !b.member).map(|b| b.name.clone()).collect();
        view.insert(self.me.clone());
        if view != self.view {
            self.view = view;
            self.stable_since = now_ms;
        }
        let seen = self.view.len() as u32;
        if seen < self.expected {
            return Decision::Wait {
                reason: format!("waiting for nodes: {seen} of {} seen", self.expected),
            };
        }
        let lowest = self.view.iter().next().cloned().unwrap_or_default();
        if lowest != self.me {
            return Decision::Wait {
                reason: format!("waiting for {lowest} to found the cluster"),
            };
        }
        if now_ms.saturating_sub(self.stable_since) < self.settle_ms {
            return Decision::Wait {
                reason: "letting the view of peers settle".into(),
            };
        }
        Decision::Found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(name: &str, member: bool) -> Beacon {
        Beacon {
            v: BEACON_VERSION,
            cluster: "lab".into(),
            name: name.into(),
            address: format!("addr-{name}"),
            expected: 3,
            member,
        }
    }

    #[test]
    fn lowest_founds_after_settling_and_only_it() {
        let all = [b("node1", false), b("node2", false), b("node3", false)];
        let mut n1 = Formation::new("node1", "lab", 3, 1000);
        let mut n2 = Formation::new("node2", "lab", 3, 1000);
        assert!(matches!(n1.step(0, &all[1..2]), Decision::Wait { .. }));
        assert!(matches!(n1.step(100, &all), Decision::Wait { .. }));
        assert!(matches!(n1.step(500, &all), Decision::Wait { .. }));
        assert_eq!(n1.step(1100, &all), Decision::Found);
        for t in [0, 5000, 100_000] {
            assert!(matches!(n2.step(t, &all), Decision::Wait { .. }));
        }
    }

    #[test]
    fn a_changing_view_restarts_the_settle_period() {
        let mut n1 = Formation::new("node1", "lab", 2, 1000);
        let two = [b("node1", false), b("node2", false)];
        let three = [b("node1", false), b("node2", false), b("node3", false)];
        n1.step(0, &two);
        n1.step(900, &three);
        assert!(matches!(n1.step(1500, &three), Decision::Wait { .. }));
        assert_eq!(n1.step(1950, &three), Decision::Found);
    }

    #[test]
    fn everyone_joins_once_a_member_announces() {
        let mut n1 = Formation::new("node1", "lab", 3, 0);
        let seen = [b("node2", false), b("node3", true), b("node4", true)];
        assert_eq!(
            n1.step(0, &seen),
            Decision::Join {
                via: vec!["addr-node3".into(), "addr-node4".into()]
            }
        );
    }

    #[test]
    fn other_clusters_are_ignored() {
        let mut n1 = Formation::new("node1", "lab", 2, 0);
        let mut other = b("node0", true);
        other.cluster = "other".into();
        let seen = [other, b("node2", false)];
        assert_eq!(n1.step(0, &seen), Decision::Found);
    }

    #[test]
    fn single_node_cluster_founds_alone() {
        let mut n = Formation::new("solo", "lab", 1, 0);
        assert_eq!(n.step(0, &[]), Decision::Found);
    }
}
