use super::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn node(name: &str, cpus: u32, memory_gib: u64) -> NodeCapacity {
    NodeCapacity {
        name: name.into(),
        ready: true,
        cordoned: false,
        labels: BTreeMap::new(),
        cpus,
        memory_bytes: memory_gib * GIB,
        disk_free_bytes: 100 * GIB,
    }
}

fn three_nodes() -> Vec<NodeCapacity> {
    vec![
        node("node1", 4, 8),
        node("node2", 4, 8),
        node("node3", 4, 8),
    ]
}

fn vm(name: &str, cpus: u32, memory_mib: u64) -> VmPlacementRequest {
    VmPlacementRequest {
        name: name.into(),
        cpus,
        memory_bytes: memory_mib * MIB,
        ..VmPlacementRequest::default()
    }
}

fn in_group(mut v: VmPlacementRequest, group: &str) -> VmPlacementRequest {
    v.group = Some(group.into());
    v
}

fn placed(name: &str, node: &str, cpus: u32, memory_mib: u64) -> PlacedVm {
    PlacedVm {
        name: name.into(),
        node: node.into(),
        cpus,
        memory_bytes: memory_mib * MIB,
        group: None,
    }
}

fn group(name: &str, policy: GroupPolicy, strength: GroupStrength) -> Group {
    Group {
        name: name.into(),
        policy,
        strength,
    }
}

fn ratio(r: f64) -> CpuOvercommit {
    CpuOvercommit::new(r).unwrap()
}

fn place_ok(
    v: &VmPlacementRequest,
    nodes: &[NodeCapacity],
    placed: &[PlacedVm],
    groups: &[Group],
) -> String {
    place(v, nodes, placed, groups, CpuOvercommit::DEFAULT)
        .unwrap()
        .node
}

fn place_err(
    v: &VmPlacementRequest,
    nodes: &[NodeCapacity],
    placed: &[PlacedVm],
    groups: &[Group],
) -> Unschedulable {
    place(v, nodes, placed, groups, CpuOvercommit::DEFAULT).unwrap_err()
}

#[test]
fn empty_cluster_picks_by_name() {
    assert_eq!(
        place_ok(&vm("a", 1, 256), &three_nodes(), &[], &[]),
        "node1"
    );
}

#[test]
fn spreads_by_free_memory_fraction() {
    let nodes = three_nodes();
    let busy = [placed("x", "node1", 1, 4096), placed("y", "node2", 1, 1024)];
    assert_eq!(place_ok(&vm("a", 1, 256), &nodes, &busy, &[]), "node3");
    // A fraction, not an absolute: 8 GiB of 16 free (50%) loses to 6 GiB of 8 (75%).
    let nodes = vec![node("big", 4, 16), node("small", 4, 8)];
    let busy = [placed("x", "big", 1, 8192), placed("y", "small", 1, 2048)];
    assert_eq!(place_ok(&vm("a", 1, 256), &nodes, &busy, &[]), "small");
}

#[test]
fn equal_memory_prefers_fewer_vms_then_name() {
    let nodes = three_nodes();
    let busy = [
        placed("x", "node1", 1, 512),
        placed("y", "node2", 1, 256),
        placed("z", "node2", 1, 256),
        placed("w", "node3", 1, 512),
    ];
    // All have 7.5 GiB free; node1 and node3 run one VM each; node1 wins by name.
    assert_eq!(place_ok(&vm("a", 1, 256), &nodes, &busy, &[]), "node1");
}

#[test]
fn sequential_placements_spread_evenly() {
    let nodes = three_nodes();
    let batch: Vec<_> = (0..6).map(|i| vm(&format!("vm{i}"), 1, 512)).collect();
    let result = place_batch(&batch, &nodes, &[], &[], CpuOvercommit::DEFAULT);
    let chosen: Vec<&str> = result
        .iter()
        .map(|(_, r)| r.as_ref().unwrap().node.as_str())
        .collect();
    assert_eq!(
        chosen,
        ["node1", "node2", "node3", "node1", "node2", "node3"]
    );
}

#[test]
fn determinism_ignores_input_order() {
    let mut nodes = three_nodes();
    let busy = vec![placed("x", "node2", 1, 1024), placed("y", "node3", 1, 512)];
    let first = place(&vm("a", 1, 256), &nodes, &busy, &[], CpuOvercommit::DEFAULT);
    nodes.reverse();
    let mut busy_rev = busy.clone();
    busy_rev.reverse();
    for _ in 0..3 {
        let again = place(
            &vm("a", 1, 256),
            &nodes,
            &busy_rev,
            &[],
            CpuOvercommit::DEFAULT,
        );
        assert_eq!(again, first);
    }
    assert_eq!(first.unwrap().node, "node1");
    // The refusal text is stable too.
    let cordoned: Vec<_> = three_nodes()
        .into_iter()
        .map(|mut n| {
            n.cordoned = true;
            n
        })
        .collect();
    let mut rev = cordoned.clone();
    rev.reverse();
    assert_eq!(
        place_err(&vm("a", 1, 256), &cordoned, &[], &[]).reason(),
        place_err(&vm("a", 1, 256), &rev, &[], &[]).reason()
    );
}

#[test]
fn cordoned_and_not_ready_nodes_take_nothing() {
    let mut nodes = three_nodes();
    nodes[0].cordoned = true;
    nodes[1].ready = false;
    assert_eq!(place_ok(&vm("a", 1, 256), &nodes, &[], &[]), "node3");
    nodes[2].ready = false;
    nodes[2].cordoned = true;
    let err = place_err(&vm("a", 1, 256), &nodes, &[], &[]);
    assert_eq!(err.cause, UnschedulableCause::NoEligibleNode);
    assert_eq!(
        err.reason(),
        "cannot place a: no node can take it: node1: cordoned; node2: not ready; node3: not ready, cordoned"
    );
}

#[test]
fn memory_is_never_overcommitted() {
    let nodes = vec![
        node("node1", 64, 1),
        node("node2", 64, 1),
        node("node3", 64, 1),
    ];
    let busy = [
        placed("x", "node1", 1, 768),
        placed("y", "node2", 1, 1024),
        placed("z", "node3", 1, 512),
    ];
    assert_eq!(place_ok(&vm("a", 1, 512), &nodes, &busy, &[]), "node3");
    let err = place_err(&vm("a", 1, 768), &nodes, &busy, &[]);
    assert_eq!(
        err.reason(),
        "cannot place a: no node can take it: node1: needs 768 MiB memory, 256 MiB free; \
         node2: needs 768 MiB memory, 0 B free; node3: needs 768 MiB memory, 512 MiB free"
    );
}

#[test]
fn cpu_overcommit_ratio_applies() {
    let nodes = vec![node("node1", 2, 64)];
    let busy = [placed("x", "node1", 6, 256)];
    // 2 CPUs × 4.0 = 8 vCPUs; 6 in use; 2 fit, 3 do not.
    assert!(place(&vm("a", 2, 256), &nodes, &busy, &[], ratio(4.0)).is_ok());
    let err = place(&vm("a", 3, 256), &nodes, &busy, &[], ratio(4.0)).unwrap_err();
    assert!(
        err.reason()
            .contains("node1: needs 3 vCPUs, 2 free (2 CPUs × 4 overcommit, 6 in use)"),
        "{err}"
    );
    // No overcommit: 2 vCPUs only.
    let err = place(&vm("a", 1, 256), &nodes, &busy, &[], ratio(1.0)).unwrap_err();
    assert!(err.reason().contains("needs 1 vCPUs, 0 free"), "{err}");
    // Fractional ratios round down: 3 CPUs × 1.5 = 4.5 vCPUs → 4 fit, 5 do not.
    let nodes = vec![node("node1", 3, 64)];
    assert!(place(&vm("a", 4, 256), &nodes, &[], &[], ratio(1.5)).is_ok());
    assert!(place(&vm("a", 5, 256), &nodes, &[], &[], ratio(1.5)).is_err());
}

#[test]
fn overcommit_setting_is_checked() {
    assert_eq!(
        CpuOvercommit::from_setting(None).unwrap(),
        CpuOvercommit::DEFAULT
    );
    assert_eq!(CpuOvercommit::DEFAULT.get(), 4.0);
    let v = serde_json::json!(2.5);
    assert_eq!(CpuOvercommit::from_setting(Some(&v)).unwrap().get(), 2.5);
    let v = serde_json::json!(8);
    assert_eq!(CpuOvercommit::from_setting(Some(&v)).unwrap().get(), 8.0);
    for bad in [
        serde_json::json!(0.5),
        serde_json::json!(0),
        serde_json::json!(65),
        serde_json::json!(-1),
        serde_json::json!("4"),
        serde_json::json!(null),
    ] {
        let err = CpuOvercommit::from_setting(Some(&bad)).unwrap_err();
        assert!(err.message.contains("CPU overcommit ratio"), "{bad}");
    }
    assert!(CpuOvercommit::new(f64::NAN).is_err());
    assert!(CpuOvercommit::new(f64::INFINITY).is_err());
}

#[test]
fn disk_must_fit_the_pool() {
    let mut nodes = three_nodes();
    for n in &mut nodes {
        n.disk_free_bytes = 10 * GIB;
    }
    nodes[2].disk_free_bytes = 30 * GIB;
    let mut v = vm("a", 1, 256);
    v.disk_bytes = 20 * GIB;
    assert_eq!(place_ok(&v, &nodes, &[], &[]), "node3");
    v.disk_bytes = 40 * GIB;
    let err = place_err(&v, &nodes, &[], &[]);
    assert!(
        err.reason()
            .contains("node1: needs 40 GiB disk, 10 GiB free"),
        "{err}"
    );
    // A batch counts the disks it already placed.
    let batch = [
        VmPlacementRequest {
            disk_bytes: 20 * GIB,
            ..vm("a", 1, 256)
        },
        VmPlacementRequest {
            disk_bytes: 20 * GIB,
            ..vm("b", 1, 256)
        },
    ];
    let out = place_batch(&batch, &nodes, &[], &[], CpuOvercommit::DEFAULT);
    assert_eq!(out[0].1.as_ref().unwrap().node, "node3");
    assert!(out[1].1.is_err(), "{:?}", out[1]);
}

#[test]
fn node_selector_must_match() {
    let mut nodes = three_nodes();
    nodes[1].labels.insert("disk".into(), "ssd".into());
    nodes[2].labels.insert("disk".into(), "hdd".into());
    let mut v = vm("a", 1, 256);
    v.node_selector.insert("disk".into(), "ssd".into());
    assert_eq!(place_ok(&v, &nodes, &[], &[]), "node2");
    nodes[1].cordoned = true;
    let err = place_err(&v, &nodes, &[], &[]);
    assert_eq!(
        err.reason(),
        "cannot place a: no node can take it: node1: lacks label disk=ssd; \
         node2: cordoned; node3: lacks label disk=ssd (has disk=hdd)"
    );
}

#[test]
fn pinning_goes_to_the_pin_only() {
    let nodes = three_nodes();
    let mut v = vm("a", 1, 256);
    v.node = Some("node3".into());
    assert_eq!(place_ok(&v, &nodes, &[], &[]), "node3");
}

#[test]
fn pinning_to_a_not_ready_node_is_refused() {
    let mut nodes = three_nodes();
    nodes[1].ready = false;
    let mut v = vm("a", 1, 256);
    v.node = Some("node2".into());
    let err = place_err(&v, &nodes, &[], &[]);
    assert_eq!(err.cause, UnschedulableCause::PinnedNodeIneligible);
    assert_eq!(
        err.reason(),
        "cannot place a: it is pinned to node2, which cannot take it: node2: not ready"
    );
    nodes[1].ready = true;
    nodes[1].cordoned = true;
    assert!(place_err(&v, &nodes, &[], &[])
        .reason()
        .ends_with("node2: cordoned"));
}

#[test]
fn pinning_to_an_unknown_node_is_refused() {
    let mut v = vm("a", 1, 256);
    v.node = Some("node9".into());
    let err = place_err(&v, &three_nodes(), &[], &[]);
    assert_eq!(err.cause, UnschedulableCause::UnknownNode);
    assert_eq!(
        err.reason(),
        "cannot place a: it is pinned to node9, which is not a node of this cluster"
    );
}

#[test]
fn existing_volumes_tie_a_vm_to_their_node() {
    let nodes = three_nodes();
    let mut v = vm("a", 1, 256);
    v.storage_node = Some("node2".into());
    assert_eq!(place_ok(&v, &nodes, &[], &[]), "node2");
    v.node = Some("node3".into());
    let err = place_err(&v, &nodes, &[], &[]);
    assert_eq!(err.cause, UnschedulableCause::UnknownNode);
    assert!(err
        .reason()
        .contains("pinned to node3 but its volumes are on node2"));
    v.node = None;
    let busy = [placed("big", "node2", 1, 8192)];
    let err = place_err(&v, &nodes, &busy, &[]);
    assert_eq!(err.cause, UnschedulableCause::PinnedNodeIneligible);
    assert!(err.reason().contains("tied by its volumes to node2, which cannot take it: node2: needs 256 MiB memory, 0 B free"), "{err}");
}

#[test]
fn unknown_group_is_refused() {
    let err = place_err(&in_group(vm("a", 1, 256), "nope"), &three_nodes(), &[], &[]);
    assert_eq!(err.cause, UnschedulableCause::UnknownGroup);
    assert!(err.reason().contains("group nope does not exist"));
}

#[test]
fn no_nodes() {
    let err = place_err(&vm("a", 1, 256), &[], &[], &[]);
    assert_eq!(err.cause, UnschedulableCause::NoNodes);
}

#[test]
fn issue_3_hard_anti_affinity_three_on_three_nodes_fourth_refused() {
    let nodes = three_nodes();
    let groups = [group("web", GroupPolicy::AntiAffinity, GroupStrength::Hard)];
    let batch: Vec<_> = (1..=4)
        .map(|i| in_group(vm(&format!("web-{i}"), 1, 256), "web"))
        .collect();
    let out = place_batch(&batch, &nodes, &[], &groups, CpuOvercommit::DEFAULT);
    let chosen: BTreeSet<&str> = out[..3]
        .iter()
        .map(|(_, r)| r.as_ref().unwrap().node.as_str())
        .collect();
    assert_eq!(chosen.len(), 3, "{out:?}");
    let err = out[3].1.as_ref().unwrap_err();
    assert_eq!(err.cause, UnschedulableCause::HardAntiAffinity);
    assert_eq!(
        err.reason(),
        "cannot place web-4: hard anti-affinity group web needs 4 nodes, one per member, but only 3 can run its members: \
         node1: runs web-1 of hard anti-affinity group web; \
         node2: runs web-2 of hard anti-affinity group web; \
         node3: runs web-3 of hard anti-affinity group web"
    );
    // Members of other groups, or of none, do not count.
    let mut other = in_group(vm("db-1", 1, 256), "db");
    let groups2 = [
        groups[0].clone(),
        group("db", GroupPolicy::AntiAffinity, GroupStrength::Hard),
    ];
    assert!(place(&other, &nodes, &[], &groups2, CpuOvercommit::DEFAULT).is_ok());
    other.group = None;
    assert!(place(&other, &nodes, &[], &groups2, CpuOvercommit::DEFAULT).is_ok());
}

#[test]
fn hard_anti_affinity_with_enough_nodes_but_no_room() {
    let mut nodes = three_nodes();
    nodes.push(node("node4", 4, 1));
    let groups = [group("web", GroupPolicy::AntiAffinity, GroupStrength::Hard)];
    let mut busy: Vec<PlacedVm> = (1..=3)
        .map(|i| PlacedVm {
            group: Some("web".into()),
            ..placed(&format!("web-{i}"), &format!("node{i}"), 1, 256)
        })
        .collect();
    busy.push(placed("filler", "node4", 1, 1024));
    let err = place_err(
        &in_group(vm("web-4", 1, 256), "web"),
        &nodes,
        &busy,
        &groups,
    );
    assert_eq!(err.cause, UnschedulableCause::HardAntiAffinity);
    assert!(
        err.reason()
            .contains("no node without a member can take it")
            && err
                .reason()
                .contains("node4: needs 256 MiB memory, 0 B free"),
        "{err}"
    );
}

#[test]
fn replacing_a_member_does_not_count_against_itself() {
    let nodes = three_nodes();
    let groups = [group("web", GroupPolicy::AntiAffinity, GroupStrength::Hard)];
    let busy: Vec<PlacedVm> = (1..=3)
        .map(|i| PlacedVm {
            group: Some("web".into()),
            ..placed(&format!("web-{i}"), &format!("node{i}"), 1, 256)
        })
        .collect();
    // web-2 is placed again (e.g. HA restart): its own entry on node2 is ignored.
    assert_eq!(
        place_ok(
            &in_group(vm("web-2", 1, 256), "web"),
            &nodes,
            &busy,
            &groups
        ),
        "node2"
    );
}

#[test]
fn soft_anti_affinity_prefers_nodes_without_members() {
    let nodes = three_nodes();
    let groups = [group("web", GroupPolicy::AntiAffinity, GroupStrength::Soft)];
    let busy = [
        PlacedVm {
            group: Some("web".into()),
            ..placed("web-1", "node1", 1, 256)
        },
        // node3 is the busiest by memory; spread alone would avoid it.
        placed("big", "node3", 1, 4096),
    ];
    // node2 has no member and more free memory than node3.
    let v = in_group(vm("web-2", 1, 256), "web");
    assert_eq!(place_ok(&v, &nodes, &busy, &groups), "node2");
    // With node2 gone, node3 (no member) beats node1 (member) despite less free memory.
    let two = vec![nodes[0].clone(), nodes[2].clone()];
    assert_eq!(place_ok(&v, &two, &busy, &groups), "node3");
    // When every node has a member, the rule gives way, and says so.
    let busy: Vec<PlacedVm> = (1..=3)
        .map(|i| PlacedVm {
            group: Some("web".into()),
            ..placed(&format!("web-{i}"), &format!("node{i}"), 1, 256)
        })
        .collect();
    let p = place(
        &in_group(vm("web-4", 1, 256), "web"),
        &nodes,
        &busy,
        &groups,
        CpuOvercommit::DEFAULT,
    )
    .unwrap();
    assert_eq!(p.node, "node1");
    assert_eq!(
        p.notes,
        ["soft anti-affinity group web: node1 already runs web-1; no eligible node runs none"]
    );
    // Soft spreading over a batch: members land on distinct nodes first.
    let batch: Vec<_> = (1..=6)
        .map(|i| in_group(vm(&format!("s-{i}"), 1, 256), "web"))
        .collect();
    let out = place_batch(&batch, &nodes, &[], &groups, CpuOvercommit::DEFAULT);
    let per_node = out
        .iter()
        .fold(BTreeMap::<String, usize>::new(), |mut m, (_, r)| {
            *m.entry(r.as_ref().unwrap().node.clone()).or_default() += 1;
            m
        });
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), [2, 2, 2]);
}

#[test]
fn hard_affinity_follows_existing_members() {
    let nodes = three_nodes();
    let groups = [group("db", GroupPolicy::Affinity, GroupStrength::Hard)];
    let busy = [PlacedVm {
        group: Some("db".into()),
        ..placed("db-1", "node2", 1, 6144)
    }];
    // node2 has the least free memory but holds the member.
    assert_eq!(
        place_ok(&in_group(vm("db-2", 1, 1024), "db"), &nodes, &busy, &groups),
        "node2"
    );
    // The first member goes anywhere (spread).
    assert_eq!(
        place_ok(&in_group(vm("db-0", 1, 256), "db"), &nodes, &[], &groups),
        "node1"
    );
    // Full: refused, naming the group and its node.
    let err = place_err(&in_group(vm("db-2", 1, 4096), "db"), &nodes, &busy, &groups);
    assert_eq!(err.cause, UnschedulableCause::HardAffinity);
    assert!(
        err.reason().starts_with("cannot place db-2: hard affinity group db runs its members on node2, which cannot take it: node1: hard affinity group db runs its members on node2; node2: needs 4 GiB memory, 2 GiB free"),
        "{err}"
    );
}

#[test]
fn soft_affinity_prefers_members_but_gives_way() {
    let nodes = three_nodes();
    let groups = [group("db", GroupPolicy::Affinity, GroupStrength::Soft)];
    let busy = [PlacedVm {
        group: Some("db".into()),
        ..placed("db-1", "node2", 1, 6144)
    }];
    assert_eq!(
        place_ok(&in_group(vm("db-2", 1, 1024), "db"), &nodes, &busy, &groups),
        "node2"
    );
    let p = place(
        &in_group(vm("db-2", 1, 4096), "db"),
        &nodes,
        &busy,
        &groups,
        CpuOvercommit::DEFAULT,
    )
    .unwrap();
    assert_eq!(p.node, "node1");
    assert_eq!(
        p.notes,
        ["soft affinity group db: its members run on node2, which cannot take it"]
    );
}

#[test]
fn evacuate_moves_everything_off_the_node() {
    let nodes = three_nodes();
    let busy = [
        placed("a", "node1", 1, 1024),
        placed("b", "node1", 1, 2048),
        placed("c", "node1", 1, 512),
        placed("x", "node2", 1, 1024),
    ];
    let reqs = [
        vm("a", 1, 1024),
        vm("b", 1, 2048),
        vm("c", 1, 512),
        vm("x", 1, 1024),
    ];
    let plan = evacuate("node1", &reqs, &nodes, &busy, &[], CpuOvercommit::DEFAULT);
    assert!(plan.stuck.is_empty(), "{:?}", plan.stuck);
    let moves: Vec<(&str, &str)> = plan
        .moves
        .iter()
        .map(|m| (m.vm.as_str(), m.to.as_str()))
        .collect();
    // Largest first, each move seen by the next: b goes to node3 (all free); a to node2
    // (7 GiB free against 6); c to node3 (6 GiB free each, node3 runs fewer VMs).
    assert_eq!(moves, [("b", "node3"), ("a", "node2"), ("c", "node3")]);
    assert!(plan.moves.iter().all(|m| m.from == "node1"));
}

#[test]
fn evacuate_reports_what_cannot_move() {
    let nodes = vec![node("node1", 4, 8), node("node2", 4, 2)];
    let mut pinned = vm("pinned", 1, 256);
    pinned.node = Some("node1".into());
    let busy = [
        placed("huge", "node1", 1, 4096),
        placed("pinned", "node1", 1, 256),
        placed("small", "node1", 1, 256),
    ];
    let reqs = [vm("huge", 1, 4096), pinned, vm("small", 1, 256)];
    let plan = evacuate("node1", &reqs, &nodes, &busy, &[], CpuOvercommit::DEFAULT);
    assert_eq!(plan.moves.len(), 1);
    assert_eq!(
        (plan.moves[0].vm.as_str(), plan.moves[0].to.as_str()),
        ("small", "node2")
    );
    let stuck: Vec<String> = plan.stuck.iter().map(|s| s.reason()).collect();
    assert_eq!(
        stuck,
        [
            "cannot place huge: no node can take it: node1: cordoned; node2: needs 4 GiB memory, 2 GiB free",
            "cannot place pinned: it is pinned to node1, which is being emptied; clear or change placement.node",
        ]
    );
}

#[test]
fn evacuate_keeps_hard_anti_affinity_and_ignores_local_storage_ties() {
    let nodes = vec![
        node("node1", 4, 8),
        node("node2", 4, 8),
        node("node3", 4, 8),
        node("node4", 4, 8),
    ];
    let groups = [group("web", GroupPolicy::AntiAffinity, GroupStrength::Hard)];
    let busy: Vec<PlacedVm> = (1..=3)
        .map(|i| PlacedVm {
            group: Some("web".into()),
            ..placed(&format!("web-{i}"), &format!("node{i}"), 1, 256)
        })
        .collect();
    let mut web1 = in_group(vm("web-1", 1, 256), "web");
    web1.storage_node = Some("node1".into());
    let plan = evacuate(
        "node1",
        &[web1.clone()],
        &nodes,
        &busy,
        &groups,
        CpuOvercommit::DEFAULT,
    );
    assert_eq!(plan.moves.len(), 1);
    assert_eq!(plan.moves[0].to, "node4");
    // Without a fourth node it is stuck with the group's reason.
    let plan = evacuate(
        "node1",
        &[web1],
        &nodes[..3],
        &busy,
        &groups,
        CpuOvercommit::DEFAULT,
    );
    assert_eq!(plan.stuck[0].cause, UnschedulableCause::HardAntiAffinity);
    assert!(
        plan.stuck[0]
            .reason()
            .contains("needs 3 nodes, one per member, but only 2 can run its members"),
        "{}",
        plan.stuck[0]
    );
}

#[test]
fn inputs_from_model_resources() {
    use keel_model::{Metadata, NodeSpec, NodeStatus, VmPhase, VmSpec, VmStatus};
    let spec: VmSpec = serde_json::from_value(serde_json::json!({
        "cpus": 2, "memory": "512MiB",
        "disks": [{"name": "root", "source": {"type": "empty", "size": "10GiB"}}],
        "placement": {"node": "node2", "group": "web", "node_selector": {"zone": "a"}}
    }))
    .unwrap();
    let mut v = Vm {
        metadata: Metadata {
            name: "web-1".into(),
            ..Metadata::default()
        },
        spec,
        status: VmStatus::default(),
    };
    let req = VmPlacementRequest::from_vm(&v);
    assert_eq!(req.cpus, 2);
    assert_eq!(req.memory_bytes, 512 * MIB);
    assert_eq!(req.disk_bytes, 10 * GIB);
    assert_eq!(req.node.as_deref(), Some("node2"));
    assert_eq!(req.group.as_deref(), Some("web"));
    assert_eq!(req.node_selector["zone"], "a");

    assert_eq!(PlacedVm::from_vm(&v), None); // not bound
    v.status.node = Some("node2".into());
    let p = PlacedVm::from_vm(&v).unwrap();
    assert_eq!(
        (p.node.as_str(), p.cpus, p.group.as_deref()),
        ("node2", 2, Some("web"))
    );
    v.spec.power_state = PowerState::Stopped;
    v.status.phase = VmPhase::Stopped;
    assert_eq!(PlacedVm::from_vm(&v), None); // stopped: holds nothing
    v.status.phase = VmPhase::Stopping;
    assert!(PlacedVm::from_vm(&v).is_some()); // still running down

    let mut n = Node {
        metadata: Metadata {
            name: "node2".into(),
            ..Metadata::default()
        },
        spec: NodeSpec {
            cordoned: true,
            ..Default::default()
        },
        status: NodeStatus::default(),
    };
    n.status.state = NodeState::Ready;
    n.status.cpu.count = 8;
    n.status.memory.total_bytes = 16 * GIB;
    let c = NodeCapacity::from_node(&n, 5 * GIB);
    assert!(c.ready && c.cordoned);
    assert_eq!(
        (c.cpus, c.memory_bytes, c.disk_free_bytes),
        (8, 16 * GIB, 5 * GIB)
    );

    let g: keel_model::VmGroup = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"}, "spec": {"policy": "anti-affinity", "strength": "hard"}
    }))
    .unwrap();
    assert_eq!(
        Group::from(&g),
        group("web", GroupPolicy::AntiAffinity, GroupStrength::Hard)
    );
    assert_eq!(
        UnschedulableCause::HardAntiAffinity.as_str(),
        "HardAntiAffinity"
    );
}
