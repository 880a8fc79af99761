//! Rolling A/B upgrades (issue 4 item 5): the decisions, as pure functions.
//!
//! ```text
//!   leader (leader_step, every round, from the record alone):
//!     first node not done ─ waiting ─▶ draining  (effect: maintenance on)
//!                           draining ─▶ installing once status.maintenance is empty
//!                           blessed  ─▶ done      (effect: maintenance off) ─▶ next node
//!                           rolled-back / failed ─▶ upgrade failed (effect: maintenance off)
//!   the node being upgraded (node_step, from the record and what it sees locally):
//!     installing ─▶ install the bundle into the other slot ─▶ rebooting (boot id recorded)
//!     rebooting, same boot id      ─▶ reboot (again: idempotent after a crash)
//!     rebooting, new boot, new version, healthy ─▶ bless the boot ─▶ blessed
//!     rebooting, new boot, old version          ─▶ rolled-back (systemd-boot fell back)
//! ```
//!
//! The I/O around these decisions is in the submodules: [`bundles`] (upload, verification,
//! storage under `<state>/upgrade-bundles`, copy between nodes over mTLS), [`routes`] (the
//! API), [`run`] (the leader and node loops) and [`host`] (the host actions behind a trait:
//! slot writer, bless, boot id, running version, reboot; a node that does not boot from A/B
//! slots records `failed` saying it cannot be upgraded in place).
//!
//! Nothing here keeps state in memory: a new leader, or a node restarted at any point,
//! computes the same next step from the replicated record, and every step is safe to repeat
//! (maintenance on/off are idempotent, installing writes the inactive slot again, blessing an
//! already blessed boot does nothing).

use std::collections::BTreeMap;

use keel_model::{
    MaintenancePhase, NodeUpgrade, NodeUpgradePhase, UpgradePhase, UpgradeSpec, UpgradeStatus,
};

pub mod bundles;
pub mod host;
pub mod routes;
pub mod run;

/// Store kind of upgrades.
pub const KIND: &str = "upgrades";

/// What the leader knows of a node (from its Node record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    /// The leader sees it ready (heartbeats).
    pub ready: bool,
    /// `spec.maintenance`.
    pub maintenance: bool,
    /// `status.maintenance.phase`.
    pub maintenance_phase: Option<MaintenancePhase>,
    /// `status.maintenance.message`.
    pub maintenance_message: String,
    /// Image version it reports (IMAGE_VERSION, see [`image_version_of_os`]).
    pub image_version: String,
}

/// A change to a Node the leader makes for the upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Maintenance on (cordon + evacuate).
    MaintenanceOn(String),
    /// Maintenance off (uncordon).
    MaintenanceOff(String),
}

/// The leader's next status and the node changes that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The status to write (unchanged when nothing happens).
    pub status: UpgradeStatus,
    /// Node changes, applied before the status is written (both are idempotent).
    pub effects: Vec<Effect>,
}

/// Seconds a node may stay away while rebooting before the message says so.
pub const REBOOT_PATIENCE: u64 = 20 * 60;

/// The image version in a node's reported OS name: the image's PRETTY_NAME is
/// `Keel <version> (Debian GNU/Linux 12)`.
pub fn image_version_of_os(os: &str) -> String {
    os.strip_prefix("Keel ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

/// The initial status of an upgrade of `spec.nodes`.
pub fn initial_status(spec: &UpgradeSpec, nodes: &BTreeMap<String, NodeView>) -> UpgradeStatus {
    UpgradeStatus {
        phase: UpgradePhase::Pending,
        message: format!(
            "upgrading {} node(s) to {}, one at a time",
            spec.nodes.len(),
            spec.version
        ),
        nodes: spec
            .nodes
            .iter()
            .map(|n| NodeUpgrade {
                node: n.clone(),
                from_version: nodes
                    .get(n)
                    .map(|v| v.image_version.clone())
                    .unwrap_or_default(),
                message: "waiting for its turn".into(),
                ..Default::default()
            })
            .collect(),
    }
}

fn set(n: &mut NodeUpgrade, phase: NodeUpgradePhase, now: u64, message: String) {
    if n.phase != phase {
        n.since = now;
    }
    n.phase = phase;
    n.message = message;
}

/// The leader's step: from the record and the nodes, what to write next.
pub fn leader_step(
    spec: &UpgradeSpec,
    status: &UpgradeStatus,
    nodes: &BTreeMap<String, NodeView>,
    now: u64,
) -> Plan {
    let mut st = status.clone();
    let mut effects = Vec::new();
    if st.phase.is_final() {
        return Plan {
            status: st,
            effects,
        };
    }
    let Some(i) = st
        .nodes
        .iter()
        .position(|n| n.phase != NodeUpgradePhase::Done)
    else {
        st.phase = UpgradePhase::Succeeded;
        st.message = format!("every node runs {}", spec.version);
        return Plan {
            status: st,
            effects,
        };
    };
    st.phase = UpgradePhase::Running;
    let name = st.nodes[i].node.clone();
    let view = nodes.get(&name).cloned();
    let n = &mut st.nodes[i];
    let Some(view) = view else {
        set(
            n,
            NodeUpgradePhase::Failed,
            now,
            format!("node {name} is no longer a member"),
        );
        st.phase = UpgradePhase::Failed;
        st.message = format!(
            "node {name} left the cluster during the upgrade; nodes after it keep their version. Apply the bundle again to upgrade the rest"
        );
        return Plan {
            status: st,
            effects,
        };
    };
    match n.phase {
        NodeUpgradePhase::Waiting => {
            if view.image_version == spec.version && !spec.allow_downgrade {
                set(
                    n,
                    NodeUpgradePhase::Done,
                    now,
                    format!("already runs {}", spec.version),
                );
            } else {
                n.from_version = view.image_version.clone();
                effects.push(Effect::MaintenanceOn(name.clone()));
                set(
                    n,
                    NodeUpgradePhase::Draining,
                    now,
                    "maintenance: moving VMs away".into(),
                );
            }
        }
        NodeUpgradePhase::Draining => {
            if !view.maintenance {
                effects.push(Effect::MaintenanceOn(name.clone()));
            }
            match view.maintenance_phase {
                Some(MaintenancePhase::Empty) => set(
                    n,
                    NodeUpgradePhase::Installing,
                    now,
                    "verifying the bundle and writing the inactive slot".into(),
                ),
                Some(MaintenancePhase::Blocked) => {
                    n.message = format!(
                        "waiting: VMs cannot leave {name}: {}. Move or stop them, or stop the upgrade with `keel node maintenance-exit {name}` and delete it",
                        view.maintenance_message
                    )
                }
                _ => n.message = "maintenance: moving VMs away".into(),
            }
        }
        NodeUpgradePhase::Installing => {
            if !view.ready {
                n.message = format!("waiting for {name} to be ready to write its slot");
            }
        }
        NodeUpgradePhase::Rebooting => {
            let away = now.saturating_sub(n.since);
            if away > REBOOT_PATIENCE {
                n.message = format!(
                    "{name} has not come back on {} for {} min; if the new slot does not start it falls back to {} by itself once its boot tries ({}) are spent",
                    spec.version,
                    away / 60,
                    n.from_version,
                    spec.tries
                );
            }
        }
        NodeUpgradePhase::Blessed => {
            effects.push(Effect::MaintenanceOff(name.clone()));
            set(
                n,
                NodeUpgradePhase::Done,
                now,
                format!("runs {}", spec.version),
            );
        }
        NodeUpgradePhase::RolledBack | NodeUpgradePhase::Failed => {
            let what = if n.phase == NodeUpgradePhase::RolledBack {
                format!(
                    "node {name} came back on its old version {} instead of {}: the new slot did not become healthy and systemd-boot fell back",
                    n.running_version, spec.version
                )
            } else {
                format!("node {name} could not be upgraded: {}", n.message)
            };
            let next = if n.phase == NodeUpgradePhase::RolledBack {
                "Fix the bundle and apply a new upgrade"
            } else {
                "Fix the cause and apply the bundle again (nodes already upgraded are skipped)"
            };
            effects.push(Effect::MaintenanceOff(name.clone()));
            set(n, NodeUpgradePhase::Failed, now, n.message.clone());
            st.phase = UpgradePhase::Failed;
            st.message = format!(
                "{what}. The upgrade stopped; {name} is out of maintenance and every node keeps serving. {next}"
            );
            return Plan {
                status: st,
                effects,
            };
        }
        NodeUpgradePhase::Done => {}
    }
    let (phase, msg) = (st.nodes[i].phase, st.nodes[i].message.clone());
    st.message = format!(
        "node {} of {}: {name} {phase:?}: {msg}",
        i + 1,
        st.nodes.len()
    );
    Plan {
        status: st,
        effects,
    }
}

/// What the node being upgraded sees of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalView {
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// Running image version.
    pub version: String,
    /// Member of the cluster and ready (keeld is healthy).
    pub healthy: bool,
}

/// What the node does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAction {
    /// Nothing for this node now.
    Nothing,
    /// Verify and write the inactive slot; then record [`NodeUpgradePhase::Rebooting`] with
    /// the boot id and reboot.
    Install,
    /// The slot is written and the node has not rebooted yet: reboot.
    Reboot,
    /// Back on the new version and healthy: bless the boot, then record `blessed`.
    Bless,
    /// Back on the old version: record `rolled-back`.
    ReportRolledBack,
    /// Rebooted on the new version, not healthy yet: wait (unblessed; keel-boot-check reboots
    /// it if this lasts).
    WaitHealthy,
}

/// The node's step for its own entry of the upgrade.
pub fn node_step(
    status: &UpgradeStatus,
    spec: &UpgradeSpec,
    me: &str,
    local: &LocalView,
) -> NodeAction {
    if status.phase.is_final() {
        return NodeAction::Nothing;
    }
    let Some(n) = status.nodes.iter().find(|n| n.node == me) else {
        return NodeAction::Nothing;
    };
    match n.phase {
        NodeUpgradePhase::Installing => NodeAction::Install,
        NodeUpgradePhase::Rebooting if n.boot_id == local.boot_id => NodeAction::Reboot,
        NodeUpgradePhase::Rebooting if local.version == spec.version => {
            if local.healthy {
                NodeAction::Bless
            } else {
                NodeAction::WaitHealthy
            }
        }
        NodeUpgradePhase::Rebooting => NodeAction::ReportRolledBack,
        _ => NodeAction::Nothing,
    }
}

/// Applies a node's outcome to its entry (the node writes this).
pub fn node_record(
    status: &mut UpgradeStatus,
    me: &str,
    phase: NodeUpgradePhase,
    local: &LocalView,
    now: u64,
    message: String,
) {
    if let Some(n) = status.nodes.iter_mut().find(|n| n.node == me) {
        if phase == NodeUpgradePhase::Rebooting {
            n.boot_id = local.boot_id.clone();
        }
        n.running_version = local.version.clone();
        set(n, phase, now, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(nodes: &[&str]) -> UpgradeSpec {
        UpgradeSpec {
            version: "0.1.0-2".into(),
            sha256: "00".repeat(32),
            size_bytes: 1,
            allow_downgrade: false,
            tries: 3,
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            source: "node1".into(),
        }
    }

    /// A fake node: its OS, its boot, its maintenance, and whether the new slot works.
    #[derive(Debug, Clone)]
    struct Fake {
        view: NodeView,
        boot: u32,
        slot_version: Option<String>,
        new_slot_boots: bool,
        vms_stuck: bool,
    }

    struct Sim {
        spec: UpgradeSpec,
        status: UpgradeStatus,
        nodes: BTreeMap<String, Fake>,
        now: u64,
        writes: u32,
    }

    impl Sim {
        fn new(names: &[&str], broken: &[&str]) -> Sim {
            let nodes: BTreeMap<String, Fake> = names
                .iter()
                .map(|n| {
                    (
                        n.to_string(),
                        Fake {
                            view: NodeView {
                                ready: true,
                                image_version: "0.1.0-1".into(),
                                ..Default::default()
                            },
                            boot: 1,
                            slot_version: None,
                            new_slot_boots: !broken.contains(n),
                            vms_stuck: false,
                        },
                    )
                })
                .collect();
            let spec = spec(names);
            let views = nodes
                .iter()
                .map(|(k, f)| (k.clone(), f.view.clone()))
                .collect();
            let status = initial_status(&spec, &views);
            Sim {
                spec,
                status,
                nodes,
                now: 1000,
                writes: 0,
            }
        }

        fn views(&self) -> BTreeMap<String, NodeView> {
            self.nodes
                .iter()
                .map(|(k, f)| (k.clone(), f.view.clone()))
                .collect()
        }

        /// One leader round, computed from the stored record only (any node can be leader).
        fn leader(&mut self) {
            let plan = leader_step(&self.spec, &self.status, &self.views(), self.now);
            for e in plan.effects {
                match e {
                    Effect::MaintenanceOn(n) => {
                        let f = self.nodes.get_mut(&n).unwrap();
                        f.view.maintenance = true;
                        f.view.maintenance_phase = Some(if f.vms_stuck {
                            MaintenancePhase::Blocked
                        } else {
                            MaintenancePhase::Empty
                        });
                        f.view.maintenance_message = "vm1 is pinned".into();
                    }
                    Effect::MaintenanceOff(n) => {
                        let f = self.nodes.get_mut(&n).unwrap();
                        f.view.maintenance = false;
                        f.view.maintenance_phase = None;
                    }
                }
            }
            if plan.status != self.status {
                self.writes += 1;
            }
            self.status = plan.status;
        }

        /// One round of every node's own loop.
        fn nodes(&mut self) {
            let names: Vec<String> = self.nodes.keys().cloned().collect();
            for name in names {
                let f = self.nodes[&name].clone();
                if !f.view.ready {
                    continue;
                }
                let local = LocalView {
                    boot_id: format!("{name}-boot-{}", f.boot),
                    version: f.view.image_version.clone(),
                    healthy: f.view.ready,
                };
                match node_step(&self.status, &self.spec, &name, &local) {
                    NodeAction::Install => {
                        self.nodes.get_mut(&name).unwrap().slot_version =
                            Some(self.spec.version.clone());
                        node_record(
                            &mut self.status,
                            &name,
                            NodeUpgradePhase::Rebooting,
                            &local,
                            self.now,
                            "rebooting".into(),
                        );
                        self.reboot(&name);
                    }
                    NodeAction::Reboot => self.reboot(&name),
                    NodeAction::Bless => node_record(
                        &mut self.status,
                        &name,
                        NodeUpgradePhase::Blessed,
                        &local,
                        self.now,
                        "blessed".into(),
                    ),
                    NodeAction::ReportRolledBack => node_record(
                        &mut self.status,
                        &name,
                        NodeUpgradePhase::RolledBack,
                        &local,
                        self.now,
                        "back on the old slot".into(),
                    ),
                    NodeAction::WaitHealthy | NodeAction::Nothing => {}
                }
            }
        }

        /// The node reboots: into the new slot if it works, else (after its tries) the old one.
        fn reboot(&mut self, name: &str) {
            let f = self.nodes.get_mut(name).unwrap();
            f.boot += 1;
            if let (Some(v), true) = (&f.slot_version, f.new_slot_boots) {
                f.view.image_version = v.clone();
            }
            f.view.ready = true;
        }

        fn run(&mut self, rounds: u32) {
            for _ in 0..rounds {
                self.leader();
                self.nodes();
                self.now += 30;
                if self.status.phase.is_final() {
                    self.leader();
                    return;
                }
            }
        }
    }

    #[test]
    fn all_nodes_upgrade_one_at_a_time() {
        let mut sim = Sim::new(&["node1", "node2", "node3"], &[]);
        let mut in_maintenance_at_once = 0;
        for _ in 0..40 {
            sim.leader();
            let m = sim.nodes.values().filter(|f| f.view.maintenance).count();
            in_maintenance_at_once = in_maintenance_at_once.max(m);
            sim.nodes();
            if sim.status.phase.is_final() {
                break;
            }
        }
        sim.leader();
        assert_eq!(
            sim.status.phase,
            UpgradePhase::Succeeded,
            "{:#?}",
            sim.status
        );
        assert_eq!(in_maintenance_at_once, 1, "one node at a time");
        for f in sim.nodes.values() {
            assert_eq!(f.view.image_version, "0.1.0-2");
            assert!(!f.view.maintenance);
            assert_eq!(f.boot, 2, "each node rebooted once");
        }
        assert!(sim
            .status
            .nodes
            .iter()
            .all(|n| n.phase == NodeUpgradePhase::Done));
        assert!(sim.status.nodes.iter().all(|n| n.from_version == "0.1.0-1"));
        // Done is stable.
        let before = sim.status.clone();
        sim.run(3);
        assert_eq!(sim.status, before);
    }

    #[test]
    fn a_rollback_stops_the_upgrade_and_leaves_the_cluster_usable() {
        let mut sim = Sim::new(&["node1", "node2", "node3"], &["node2"]);
        sim.run(60);
        assert_eq!(sim.status.phase, UpgradePhase::Failed);
        assert!(
            sim.status
                .message
                .contains("node2 came back on its old version 0.1.0-1"),
            "{}",
            sim.status.message
        );
        assert!(
            sim.status.message.contains("apply a new upgrade"),
            "{}",
            sim.status.message
        );
        let phases: Vec<_> = sim.status.nodes.iter().map(|n| n.phase).collect();
        assert_eq!(
            phases,
            vec![
                NodeUpgradePhase::Done,
                NodeUpgradePhase::Failed,
                NodeUpgradePhase::Waiting
            ]
        );
        assert_eq!(sim.nodes["node1"].view.image_version, "0.1.0-2");
        assert_eq!(sim.nodes["node2"].view.image_version, "0.1.0-1");
        assert_eq!(sim.nodes["node3"].view.image_version, "0.1.0-1");
        assert_eq!(sim.nodes["node3"].boot, 1, "node3 was never touched");
        assert!(
            sim.nodes.values().all(|f| !f.view.maintenance),
            "nobody left in maintenance"
        );
    }

    #[test]
    fn a_new_leader_or_a_crash_mid_way_continues_from_the_record() {
        // Leaders change every round: each leader_step call starts from the record alone, so
        // this is the same as the simulation; what matters is that repeating a round
        // (a leader that wrote effects and died before writing the status) changes nothing.
        let mut sim = Sim::new(&["node1", "node2", "node3"], &[]);
        for round in 0..60 {
            let views = sim.views();
            let plan = leader_step(&sim.spec, &sim.status, &views, sim.now);
            // The old leader applied the effects and died before writing the status...
            for e in &plan.effects {
                if let Effect::MaintenanceOn(n) = e {
                    let f = sim.nodes.get_mut(n).unwrap();
                    f.view.maintenance = true;
                    f.view.maintenance_phase = Some(MaintenancePhase::Empty);
                }
            }
            // ...every third round; the new leader recomputes from the old record.
            if round % 3 != 0 {
                sim.leader();
            }
            sim.nodes();
            // And a node whose keeld crashed between recording `rebooting` and rebooting
            // reboots when it comes back (same boot id).
            if round == 7 {
                let name = "node2";
                if sim.status.nodes[1].phase == NodeUpgradePhase::Rebooting {
                    let local = LocalView {
                        boot_id: sim.status.nodes[1].boot_id.clone(),
                        version: "0.1.0-1".into(),
                        healthy: true,
                    };
                    assert_eq!(
                        node_step(&sim.status, &sim.spec, name, &local),
                        NodeAction::Reboot
                    );
                }
            }
            sim.now += 30;
            if sim.status.phase.is_final() {
                break;
            }
        }
        sim.leader();
        assert_eq!(
            sim.status.phase,
            UpgradePhase::Succeeded,
            "{:#?}",
            sim.status
        );
        assert!(sim
            .nodes
            .values()
            .all(|f| f.view.image_version == "0.1.0-2" && !f.view.maintenance && f.boot == 2));
    }

    #[test]
    fn blocked_maintenance_says_how_to_continue() {
        let mut sim = Sim::new(&["node1", "node2"], &[]);
        sim.nodes.get_mut("node1").unwrap().vms_stuck = true;
        sim.run(5);
        assert_eq!(sim.status.phase, UpgradePhase::Running);
        let n = &sim.status.nodes[0];
        assert_eq!(n.phase, NodeUpgradePhase::Draining);
        assert!(n.message.contains("vm1 is pinned"), "{}", n.message);
        assert!(
            n.message.contains("keel node maintenance-exit node1"),
            "{}",
            n.message
        );
        assert!(
            sim.status.message.contains("node1"),
            "{}",
            sim.status.message
        );
        // The VM goes away: the upgrade continues by itself.
        let f = sim.nodes.get_mut("node1").unwrap();
        f.vms_stuck = false;
        f.view.maintenance_phase = Some(MaintenancePhase::Empty);
        sim.run(40);
        assert_eq!(sim.status.phase, UpgradePhase::Succeeded);
    }

    #[test]
    fn nodes_on_the_version_already_and_nodes_that_left() {
        let mut sim = Sim::new(&["node1", "node2"], &[]);
        sim.nodes.get_mut("node1").unwrap().view.image_version = "0.1.0-2".into();
        sim.run(40);
        assert_eq!(sim.status.phase, UpgradePhase::Succeeded);
        assert_eq!(
            sim.nodes["node1"].boot, 1,
            "a node on the version is not rebooted"
        );

        let mut sim = Sim::new(&["node1", "node2"], &[]);
        sim.nodes.remove("node1");
        sim.run(5);
        assert_eq!(sim.status.phase, UpgradePhase::Failed);
        assert!(
            sim.status.message.contains("node1 left the cluster"),
            "{}",
            sim.status.message
        );
    }

    #[test]
    fn a_slow_reboot_is_explained() {
        let s = spec(&["node1"]);
        let mut st = initial_status(&s, &BTreeMap::new());
        st.nodes[0].phase = NodeUpgradePhase::Rebooting;
        st.nodes[0].since = 0;
        st.nodes[0].from_version = "0.1.0-1".into();
        let views = BTreeMap::from([("node1".to_string(), NodeView::default())]);
        let plan = leader_step(&s, &st, &views, REBOOT_PATIENCE + 60);
        assert!(
            plan.status.nodes[0]
                .message
                .contains("falls back to 0.1.0-1"),
            "{}",
            plan.status.nodes[0].message
        );
        assert!(plan.effects.is_empty());
    }

    #[test]
    fn node_steps() {
        let s = spec(&["node1"]);
        let mut st = initial_status(&s, &BTreeMap::new());
        let local = LocalView {
            boot_id: "b1".into(),
            version: "0.1.0-1".into(),
            healthy: true,
        };
        assert_eq!(node_step(&st, &s, "node1", &local), NodeAction::Nothing);
        assert_eq!(node_step(&st, &s, "other", &local), NodeAction::Nothing);
        st.nodes[0].phase = NodeUpgradePhase::Installing;
        assert_eq!(node_step(&st, &s, "node1", &local), NodeAction::Install);
        node_record(
            &mut st,
            "node1",
            NodeUpgradePhase::Rebooting,
            &local,
            5,
            "rebooting".into(),
        );
        assert_eq!(st.nodes[0].boot_id, "b1");
        assert_eq!(node_step(&st, &s, "node1", &local), NodeAction::Reboot);
        let new = LocalView {
            boot_id: "b2".into(),
            version: "0.1.0-2".into(),
            healthy: false,
        };
        assert_eq!(node_step(&st, &s, "node1", &new), NodeAction::WaitHealthy);
        let new = LocalView {
            healthy: true,
            ..new
        };
        assert_eq!(node_step(&st, &s, "node1", &new), NodeAction::Bless);
        let old = LocalView {
            boot_id: "b3".into(),
            ..local
        };
        assert_eq!(
            node_step(&st, &s, "node1", &old),
            NodeAction::ReportRolledBack
        );
        st.phase = UpgradePhase::Failed;
        assert_eq!(node_step(&st, &s, "node1", &old), NodeAction::Nothing);
    }

    #[test]
    fn version_from_the_os_name() {
        assert_eq!(
            image_version_of_os("Keel 0.1.0-2 (Debian GNU/Linux 12)"),
            "0.1.0-2"
        );
        assert_eq!(image_version_of_os("Debian GNU/Linux 12 (bookworm)"), "");
    }
}
