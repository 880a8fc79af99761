//! VMs end to end on a real 3-node dev cluster, every node with its own libvirt under TCG:
//! create from an image, hard anti-affinity places three VMs on three nodes and refuses a
//! fourth, each domain runs in its own node's hypervisor with its NIC plugged into the node's
//! Open vSwitch bridge, stop/start converge, delete leaves no domain, disk, port or tap device
//! behind, and bad input gets a clear 4xx and creates nothing.

use std::time::Duration;

use anyhow::{Context, Result};
use keel_tests::{ok, wait_until, DevCluster};
use serde_json::{json, Value};

/// The guest taps plugged into the node's bridge, and the tap devices that exist at all.
fn taps(dev: &DevCluster, node: &str) -> Result<(Vec<String>, Vec<String>)> {
    let ports = dev
        .exec(node, &["ovs-vsctl", "list-ports", BRIDGE])?
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let links = dev
        .exec(node, &["ip", "-o", "link", "show"])?
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .filter(|n| n.starts_with("vnet"))
        .collect();
    Ok((ports, links))
}

const BRIDGE: &str = "br-vms";

fn virsh_list(dev: &DevCluster, node: &str) -> Result<String> {
    dev.virsh(node, &["list", "--all", "--name"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_run_on_their_nodes_hypervisors_and_clean_up() -> Result<()> {
    let dev = DevCluster::up("vms", 3, "10.77.6.0/24", 18448)?;
    let api = dev.client(&dev.info.endpoint).await?;
    dev.import_guest_image("tiny")?;

    // Every node says how its guests run: this machine's /dev/kvm hangs guests (or is
    // absent), so the probe's verdict is TCG with the reason; a node setting forces TCG too,
    // and an unknown value is reported, not guessed at.
    let hv = wait_until(
        "node1 reporting its hypervisor",
        Duration::from_secs(60),
        || async {
            let n = api.call("GET", "/api/v1/nodes/node1", None).await?;
            Ok((!n.body["status"]["hypervisor"].is_null())
                .then(|| n.body["status"]["hypervisor"].clone()))
        },
    )
    .await?;
    if hv["kvm"] != "usable" {
        assert_eq!(hv["accel"], "tcg", "{hv}");
        assert!(hv["message"].as_str().unwrap_or("").contains("TCG"), "{hv}");
    }
    for (value, want) in [("tcg", "forces emulation"), ("turbo", "not known")] {
        let s = api.put_setting("virt.accel.node1", json!(value)).await?;
        assert_eq!(s.status, 200, "{}", s.body);
        let hv = wait_until(
            "node1 applying virt.accel.node1",
            Duration::from_secs(30),
            || async {
                let n = api.call("GET", "/api/v1/nodes/node1", None).await?;
                let hv = n.body["status"]["hypervisor"].clone();
                Ok(hv["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains(want)
                    .then_some(hv))
            },
        )
        .await?;
        if value == "tcg" {
            assert_eq!(hv["accel"], "tcg", "{hv}");
        }
    }
    let d = api
        .call("DELETE", "/api/v1/settings/virt.accel.node1", None)
        .await?;
    assert_eq!(d.status, 204, "{}", d.body);

    // Bad input: a clear 4xx, and nothing is created.
    let spec = |name: &str, image: &str, cpus: u32, memory: Value| {
        json!({"metadata": {"name": name}, "spec": {"cpus": cpus, "memory": memory,
            "disks": [{"name": "root", "source": {"type": "image", "image": image}}]}})
    };
    for (body, field) in [
        (
            spec("vm-x", "nosuch", 1, json!("128MiB")),
            "spec.disks[0].source.image",
        ),
        (spec("vm-x", "tiny", 0, json!("128MiB")), "spec.cpus"),
        (spec("vm-x", "tiny", 1, json!("lots")), "spec.memory"),
        (spec("Not_DNS", "tiny", 1, json!("128MiB")), "metadata.name"),
    ] {
        let a = api.call("POST", "/api/v1/vms", Some(body.clone())).await?;
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        let f = a.body["error"]["field"].as_str().unwrap_or("");
        assert!(
            f.starts_with(field),
            "{body}: field {f:?}, want {field}: {}",
            a.body
        );
    }
    let out = dev.cli(&[
        "vm", "create", "vm-x", "--image", "tiny", "--cpus", "1", "--memory", "lots",
    ])?;
    assert!(!out.status.success(), "memory 'lots' must be refused");
    let list = api.call("GET", "/api/v1/vms", None).await?;
    assert_eq!(list.body["items"], json!([]), "{}", list.body);

    // Hard anti-affinity: three VMs on three nodes.
    ok(
        dev.cli(&["vm", "group", "create", "web", "--anti-affinity", "hard"])?,
        "group create",
    )?;
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let name = format!("web{i}");
        ok(
            dev.cli(&[
                "vm",
                "create",
                &name,
                "--image",
                "tiny",
                "--cpus",
                "1",
                "--memory",
                "128MiB",
                "--group",
                "web",
                "--network",
                BRIDGE,
                "--wait",
            ])?,
            "vm create",
        )?;
        let show: Value = serde_json::from_str(&ok(
            dev.cli(&["vm", "show", &name, "-o", "json"])?,
            "vm show",
        )?)?;
        assert_eq!(show["status"]["phase"], "running", "{show}");
        let node = show["status"]["node"].as_str().context("node")?.to_string();
        // The domain runs in that node's own libvirt, and in no other.
        assert!(
            virsh_list(&dev, &node)?.lines().any(|l| l.trim() == name),
            "{name} not in {node}'s libvirt"
        );
        // Its NIC is a tap on the node's bridge, with the MAC the VM's uid derives.
        let (ports, links) = taps(&dev, &node)?;
        assert_eq!(ports.len(), 1, "{name}: ports {ports:?}");
        assert_eq!(links, ports, "{name}");
        let iflist = dev.virsh(&node, &["domiflist", &name])?;
        assert!(iflist.contains(BRIDGE), "{iflist}");
        assert!(iflist.contains("52:54:00:"), "{iflist}");
        nodes.push((name, node));
    }
    let mut distinct: Vec<&String> = nodes.iter().map(|(_, n)| n).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{nodes:?}");
    for (name, node) in &nodes {
        for other in ["node1", "node2", "node3"]
            .iter()
            .filter(|o| **o != node.as_str())
        {
            assert!(
                !virsh_list(&dev, other)?.lines().any(|l| l.trim() == name),
                "{name} also on {other}"
            );
        }
    }
    // Usage: libvirt's counters of the running guest reach its status.
    let usage = keel_tests::wait_until(
        "web1's usage in its status",
        std::time::Duration::from_secs(90),
        || async {
            let v = api.call("GET", "/api/v1/vms/web1", None).await?;
            let u = v.body["status"]["usage"].clone();
            let seen = u["memory_bytes"].as_u64().unwrap_or(0) > 0
                && u["disk_read_bytes"].as_u64().unwrap_or(0) > 0;
            Ok(seen.then_some(u))
        },
    )
    .await?;
    assert_eq!(usage["memory_bytes"], json!(128u64 << 20), "{usage}");

    let fourth = api
        .call("POST", "/api/v1/vms", Some(json!({"metadata": {"name": "web4"}, "spec": {"cpus": 1, "memory": "128MiB",
            "placement": {"group": "web"}, "disks": [{"name": "root", "source": {"type": "image", "image": "tiny"}}]}})))
        .await?;
    assert_eq!(fourth.status, 400, "{}", fourth.body);
    assert!(
        fourth.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("anti-affinity"),
        "{}",
        fourth.body
    );

    // A cordoned node takes no new VMs, even pinned ones; uncordon lifts it.
    ok(dev.cli(&["node", "cordon", "node1"])?, "node cordon")?;
    let n1 = api.call("GET", "/api/v1/nodes/node1", None).await?;
    assert_eq!(n1.body["spec"]["cordoned"], true, "{}", n1.body);
    let pinned = api
        .call("POST", "/api/v1/vms", Some(json!({"metadata": {"name": "pinned"}, "spec": {"cpus": 1, "memory": "128MiB",
            "placement": {"node": "node1"}, "disks": [{"name": "root", "source": {"type": "image", "image": "tiny"}}]}})))
        .await?;
    assert_eq!(pinned.status, 400, "{}", pinned.body);
    assert!(
        pinned.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("cordon"),
        "{}",
        pinned.body
    );
    ok(dev.cli(&["node", "uncordon", "node1"])?, "node uncordon")?;
    let n1 = api.call("GET", "/api/v1/nodes/node1", None).await?;
    assert_eq!(n1.body["spec"]["cordoned"], false, "{}", n1.body);

    // Stop and start converge on the node.
    let (name, node) = nodes[0].clone();
    ok(dev.cli(&["vm", "stop", &name, "--wait"])?, "vm stop")?;
    let state = dev.virsh(&node, &["domstate", &name])?;
    assert!(state.contains("shut off"), "{state}");
    assert_eq!(
        taps(&dev, &node)?,
        (vec![], vec![]),
        "a stopped VM keeps no tap"
    );
    ok(dev.cli(&["vm", "start", &name, "--wait"])?, "vm start")?;
    let state = dev.virsh(&node, &["domstate", &name])?;
    assert!(state.contains("running"), "{state}");

    // An image VMs boot from cannot be deleted from under them.
    let busy = api.call("DELETE", "/api/v1/images/tiny", None).await?;
    assert_eq!(busy.status, 409, "{}", busy.body);
    assert_eq!(busy.body["error"]["code"], "in_use", "{}", busy.body);
    assert!(
        busy.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("VM {name}")),
        "{}",
        busy.body
    );
    let still = api.call("GET", "/api/v1/images/tiny", None).await?;
    assert_eq!(still.status, 200, "{}", still.body);

    // Delete leaves no domain and no disk behind.
    for (name, node) in &nodes {
        ok(dev.cli(&["vm", "delete", name, "--wait"])?, "vm delete")?;
        assert!(
            !virsh_list(&dev, node)?.lines().any(|l| l.trim() == name),
            "{name} still defined on {node}"
        );
        let vols = dev.state.join(format!("{node}/state/pool/volumes"));
        let left: Vec<_> = std::fs::read_dir(&vols)?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "disks left on {node}: {left:?}");
        assert_eq!(
            taps(&dev, node)?,
            (vec![], vec![]),
            "ports or taps left on {node}"
        );
    }
    let gone = api.call("GET", "/api/v1/vms/web1", None).await?;
    assert_eq!(gone.status, 404);
    // With no VM left, the image goes.
    let del = api.call("DELETE", "/api/v1/images/tiny", None).await?;
    assert_eq!(del.status, 204, "{}", del.body);
    Ok(())
}
