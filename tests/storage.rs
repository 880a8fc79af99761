//! Local storage end to end on a real 2-node dev cluster, each node with its own libvirt
//! under TCG: pools report their space, a disk larger than any pool is refused and creates
//! nothing, VM disks are Volume records (removed with the VM, or kept with keep_disks and
//! attached to another VM), volumes grow live and never shrink, per-disk QoS reaches the
//! domain XML, snapshots of stopped and running VMs (create, list, revert, delete), clones
//! boot, templates never start and VMs are made from them, and bad input gets a 4xx with the
//! offending field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use keel_tests::{ok, wait_until, Api, DevCluster};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

fn volumes_dir(dev: &DevCluster, node: &str) -> PathBuf {
    dev.state.join(format!("{node}/state/pool/volumes"))
}

/// `qemu-img info` of a volume file, as JSON (readable while a guest runs).
fn img_info(path: &Path) -> Result<Value> {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()?;
    Ok(serde_json::from_str(&ok(out, "qemu-img info")?)?)
}

fn snapshot_names(path: &Path) -> Result<Vec<String>> {
    Ok(img_info(path)?["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

fn qemu_io(path: &Path, cmd: &str) -> Result<String> {
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(path)
        .output()?;
    ok(out, &format!("qemu-io {cmd}"))
}

async fn vm_phase(api: &Api, name: &str) -> Result<(u16, Value)> {
    let a = api
        .call("GET", &format!("/api/v1/vms/{name}"), None)
        .await?;
    Ok((a.status, a.body))
}

async fn wait_phase(api: &Api, name: &str, phase: &str) -> Result<Value> {
    wait_until(
        &format!("{name} {phase}"),
        Duration::from_secs(180),
        || async {
            let (status, body) = vm_phase(api, name).await?;
            anyhow::ensure!(status == 200, "{status} {body}");
            anyhow::ensure!(body["status"]["phase"] != "failed", "failed: {body}");
            Ok((body["status"]["phase"] == phase).then_some(body))
        },
    )
    .await
}

async fn wait_gone(api: &Api, path: &str) -> Result<()> {
    wait_until(path, Duration::from_secs(120), || async {
        let a = api.call("GET", path, None).await?;
        Ok((a.status == 404).then_some(()))
    })
    .await
}

async fn volume(api: &Api, name: &str) -> Result<Value> {
    let a = api
        .call("GET", &format!("/api/v1/volumes/{name}"), None)
        .await?;
    anyhow::ensure!(a.status == 200, "volume {name}: {} {}", a.status, a.body);
    Ok(a.body)
}

fn assert_field(a: &keel_tests::Answer, status: u16, field: &str, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.body);
    let f = a.body["error"]["field"].as_str().unwrap_or("");
    assert!(
        f.starts_with(field),
        "{what}: field {f:?}, want {field}: {}",
        a.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_pools_volumes_snapshots_clones_templates() -> Result<()> {
    let dev = DevCluster::up("storage", 2, "10.77.10.0/24", 18452)?;
    let api = dev.client(&dev.info.endpoint).await?;
    dev.import_guest_image("tiny")?;

    // Pools: one per node, with plausible numbers.
    let pools = wait_until("both pools", Duration::from_secs(30), || async {
        let a = api.call("GET", "/api/v1/pools", None).await?;
        let items = a.body["items"].as_array().cloned().unwrap_or_default();
        Ok(
            (items.len() == 2 && items.iter().all(|p| p["status"]["phase"] == "ready"))
                .then_some(items),
        )
    })
    .await?;
    for (p, node) in pools.iter().zip(["node1", "node2"]) {
        assert_eq!(p["metadata"]["name"], format!("{node}-local"), "{p}");
        assert_eq!(p["spec"]["node"], node, "{p}");
        assert_eq!(p["spec"]["kind"]["type"], "dir", "{p}");
        let s = &p["status"];
        let (cap, avail, alloc) = (
            s["capacity_bytes"].as_u64().unwrap_or(0),
            s["available_bytes"].as_u64().unwrap_or(0),
            s["allocation_bytes"].as_u64().unwrap_or(0),
        );
        assert!(cap > 100 * MIB && avail > 0 && avail <= cap, "{p}");
        assert!(alloc < cap, "{p}");
    }
    let shown: Value = serde_json::from_str(&ok(
        dev.cli(&["pool", "show", "node1-local", "-o", "json"])?,
        "pool show",
    )?)?;
    assert_eq!(shown["spec"]["node"], "node1");
    let table = ok(dev.cli(&["pool", "list"])?, "pool list")?;
    assert!(table.contains("node2-local"), "{table}");

    // A disk larger than any pool: a 4xx naming the disk, and nothing is created.
    let vm_body = |name: &str, disks: Value| json!({"metadata": {"name": name}, "spec": {"cpus": 1, "memory": "128MiB", "disks": disks}});
    let root = json!({"name": "root", "source": {"type": "image", "image": "tiny"}});
    let huge = api
        .call(
            "POST",
            "/api/v1/vms",
            Some(vm_body(
                "big",
                json!([root, {"name": "data", "source": {"type": "empty", "size": "60TiB"}}]),
            )),
        )
        .await?;
    assert_field(
        &huge,
        400,
        "spec.disks[1].source.size",
        "disk larger than the pool",
    );
    assert!(
        huge.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no pool has that much free"),
        "{}",
        huge.body
    );
    let huge_image = api
        .call(
            "POST",
            "/api/v1/vms",
            Some(vm_body(
                "big",
                json!([{"name": "root", "source": {"type": "image", "image": "tiny", "size": "60TiB"}}]),
            )),
        )
        .await?;
    assert_field(
        &huge_image,
        400,
        "spec.disks[0].source.size",
        "image disk larger than the pool",
    );
    assert_eq!(vm_phase(&api, "big").await?.0, 404, "no VM record");
    let vols = api.call("GET", "/api/v1/volumes", None).await?;
    assert_eq!(vols.body["items"], json!([]), "no volume: {}", vols.body);
    for node in ["node1", "node2"] {
        let left: Vec<_> = std::fs::read_dir(volumes_dir(&dev, node))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "no volume file on {node}: {left:?}");
    }

    // Bad input: zero and negative sizes, an unknown pool, each with its field.
    for (size, field) in [
        (json!("0"), "spec.disks[0].source.size"),
        (json!("-1GiB"), "spec.disks[0].source"),
    ] {
        let a = api
            .call(
                "POST",
                "/api/v1/vms",
                Some(vm_body(
                    "bad",
                    json!([{"name": "d", "source": {"type": "empty", "size": size}}]),
                )),
            )
            .await?;
        assert_field(&a, 400, field, &format!("empty disk of {size}"));
    }
    let vol_body = |name: &str, pool: &str, size: Value| json!({"metadata": {"name": name}, "spec": {"pool": pool, "size": size}});
    let a = api
        .call(
            "POST",
            "/api/v1/volumes",
            Some(vol_body("v", "nosuch", json!("1GiB"))),
        )
        .await?;
    assert_field(&a, 400, "spec.pool", "unknown pool");
    for size in [json!(0), json!("-5MiB"), json!("60TiB")] {
        let a = api
            .call(
                "POST",
                "/api/v1/volumes",
                Some(vol_body("v", "node1-local", size.clone())),
            )
            .await?;
        assert_field(&a, 400, "spec.size", &format!("volume of {size}"));
    }
    assert_eq!(
        api.call("GET", "/api/v1/volumes/v", None).await?.status,
        404
    );

    // A VM with a throttled root disk and an empty data disk: its disks become volumes.
    let vm1 = api
        .call(
            "POST",
            "/api/v1/vms",
            Some(vm_body(
                "vm1",
                json!([
                    {"name": "root", "source": {"type": "image", "image": "tiny"},
                     "qos": {"read_iops": 100, "write_bytes_sec": 1048576}},
                    {"name": "data", "source": {"type": "empty", "size": "64MiB"}}
                ]),
            )),
        )
        .await?;
    assert_eq!(vm1.status, 201, "{}", vm1.body);
    let running = wait_phase(&api, "vm1", "running").await?;
    let node = running["status"]["node"]
        .as_str()
        .context("vm1 node")?
        .to_string();
    let vroot = volume(&api, "vm1-root").await?;
    assert_eq!(vroot["status"]["owner"], "vm1", "{vroot}");
    assert_eq!(vroot["status"]["attached_to"], "vm1", "{vroot}");
    assert_eq!(vroot["spec"]["backing_image"], "tiny", "{vroot}");
    assert_eq!(vroot["spec"]["pool"], format!("{node}-local"), "{vroot}");
    assert_eq!(vroot["status"]["node"], node.as_str(), "{vroot}");
    assert_eq!(vroot["status"]["phase"], "ready", "{vroot}");
    let vdata = volume(&api, "vm1-data").await?;
    assert_eq!(vdata["spec"]["size"], 64 * MIB, "{vdata}");
    let data_file = volumes_dir(&dev, &node).join("vm1-data.qcow2");
    let root_file = volumes_dir(&dev, &node).join("vm1-root.qcow2");
    assert_eq!(img_info(&data_file)?["virtual-size"], 64 * MIB);

    // QoS reaches the domain XML.
    let xml = dev.virsh(&node, &["dumpxml", "vm1"])?;
    assert!(xml.contains("<read_iops_sec>100</read_iops_sec>"), "{xml}");
    assert!(
        xml.contains("<write_bytes_sec>1048576</write_bytes_sec>"),
        "{xml}"
    );

    // Grow live (the VM runs), never shrink.
    let grown = api
        .call(
            "POST",
            "/api/v1/volumes/vm1-data/resize",
            Some(json!({"size": "128MiB"})),
        )
        .await?;
    assert_eq!(grown.status, 200, "{}", grown.body);
    assert_eq!(
        grown.body["status"]["size_bytes"],
        128 * MIB,
        "{}",
        grown.body
    );
    assert_eq!(img_info(&data_file)?["virtual-size"], 128 * MIB);
    let blk = dev.virsh(&node, &["domblkinfo", "vm1", "vdb"])?;
    assert!(
        blk.contains(&(128 * MIB).to_string()),
        "the guest sees it: {blk}"
    );
    let shrink = api
        .call(
            "POST",
            "/api/v1/volumes/vm1-data/resize",
            Some(json!({"size": "64MiB"})),
        )
        .await?;
    assert_field(&shrink, 400, "size", "shrink");
    assert!(
        shrink.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("only grow"),
        "{}",
        shrink.body
    );
    assert_eq!(img_info(&data_file)?["virtual-size"], 128 * MIB);

    // A snapshot of the running VM (disks and memory, inside the qcow2 files).
    let live = api
        .call(
            "POST",
            "/api/v1/vms/vm1/snapshots",
            Some(json!({"name": "live1"})),
        )
        .await?;
    assert_eq!(live.status, 201, "{}", live.body);
    assert_eq!(live.body["status"]["phase"], "ready", "{}", live.body);
    assert_eq!(live.body["status"]["live"], true, "{}", live.body);
    assert!(snapshot_names(&root_file)?.contains(&"live1".to_string()));
    assert_eq!(
        dev.virsh(&node, &["domstate", "vm1"])?.trim(),
        "running",
        "the guest keeps running"
    );
    // Bad input and wrong states.
    let bad = api
        .call(
            "POST",
            "/api/v1/vms/vm1/snapshots",
            Some(json!({"name": "Not_DNS"})),
        )
        .await?;
    assert_field(&bad, 400, "name", "snapshot name");
    let dup = api
        .call(
            "POST",
            "/api/v1/vms/vm1/snapshots",
            Some(json!({"name": "live1"})),
        )
        .await?;
    assert_eq!(dup.status, 409, "{}", dup.body);
    let revert_running = api
        .call("POST", "/api/v1/vms/vm1/snapshots/live1/revert", None)
        .await?;
    assert_eq!(revert_running.status, 409, "{}", revert_running.body);
    assert!(
        revert_running.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("stop"),
        "{}",
        revert_running.body
    );
    let clone_running = api
        .call(
            "POST",
            "/api/v1/vms/vm1/clone",
            Some(json!({"name": "vm2"})),
        )
        .await?;
    assert_eq!(clone_running.status, 409, "{}", clone_running.body);
    let bad_clone = api
        .call(
            "POST",
            "/api/v1/vms/vm1/clone",
            Some(json!({"name": "Vm 2"})),
        )
        .await?;
    assert_field(&bad_clone, 400, "name", "clone name");

    // Stopped: snapshot with qemu-img, change the disk, revert, delete.
    ok(dev.cli(&["vm", "stop", "vm1", "--wait"])?, "vm stop")?;
    let out = ok(
        dev.cli(&["vm", "snapshot", "create", "vm1", "cold1", "-o", "json"])?,
        "snapshot create",
    )?;
    let cold: Value = serde_json::from_str(&out)?;
    assert_eq!(cold["status"]["phase"], "ready", "{cold}");
    assert_eq!(cold["status"]["live"], false, "{cold}");
    assert_eq!(
        cold["status"]["volumes"],
        json!(["vm1-root", "vm1-data"]),
        "{cold}"
    );
    for f in [&root_file, &data_file] {
        assert!(snapshot_names(f)?.contains(&"cold1".to_string()), "{f:?}");
    }
    qemu_io(&data_file, "write -P 0xab 0 64k")?;
    qemu_io(&data_file, "read -P 0xab 0 64k")?;
    let list: Value = serde_json::from_str(&ok(
        dev.cli(&["vm", "snapshot", "list", "vm1", "-o", "json"])?,
        "snapshot list",
    )?)?;
    let names: Vec<&str> = list["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|s| s["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["cold1", "live1"], "{list}");
    ok(
        dev.cli(&["vm", "snapshot", "revert", "vm1", "cold1"])?,
        "revert",
    )?;
    qemu_io(&data_file, "read -P 0 0 64k").context("the write is undone")?;
    ok(
        dev.cli(&["vm", "snapshot", "delete", "vm1", "cold1"])?,
        "delete",
    )?;
    assert!(!snapshot_names(&root_file)?.contains(&"cold1".to_string()));
    let list = api.call("GET", "/api/v1/vms/vm1/snapshots", None).await?;
    assert_eq!(
        list.body["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        list.body
    );
    let gone = api
        .call("DELETE", "/api/v1/vms/vm1/snapshots/nosuch", None)
        .await?;
    assert_eq!(gone.status, 404, "{}", gone.body);

    // Clone the stopped VM: copies of its disks on its node, and the clone boots.
    ok(
        dev.cli(&["vm", "clone", "vm1", "vm2", "--start", "--wait"])?,
        "vm clone",
    )?;
    let vm2 = wait_phase(&api, "vm2", "running").await?;
    assert_eq!(
        vm2["status"]["node"],
        node.as_str(),
        "local disks pin the clone"
    );
    assert_ne!(vm2["metadata"]["uid"], running["metadata"]["uid"]);
    assert_eq!(dev.virsh(&node, &["domstate", "vm2"])?.trim(), "running");
    let v2data = volume(&api, "vm2-data").await?;
    assert_eq!(v2data["status"]["owner"], "vm2", "{v2data}");
    assert_eq!(v2data["spec"]["clone_of"], "vm1-data", "{v2data}");
    assert_eq!(v2data["spec"]["size"], 128 * MIB, "{v2data}");
    let v2file = volumes_dir(&dev, &node).join("vm2-data.qcow2");
    assert!(
        snapshot_names(&v2file)?.is_empty(),
        "snapshots are not copied"
    );

    // Templates: never start; VMs are made from them.
    let tpl = api
        .call(
            "POST",
            "/api/v1/vms",
            Some(
                json!({"metadata": {"name": "tpl"}, "spec": {"cpus": 1, "memory": "128MiB",
                "template": true, "power_state": "stopped", "disks": [root]}}),
            ),
        )
        .await?;
    assert_eq!(tpl.status, 201, "{}", tpl.body);
    let running_tpl = api
        .call(
            "POST",
            "/api/v1/vms",
            Some(
                json!({"metadata": {"name": "tpl2"}, "spec": {"cpus": 1, "memory": "128MiB",
                "template": true, "disks": [root]}}),
            ),
        )
        .await?;
    assert_field(&running_tpl, 400, "spec.power_state", "running template");
    wait_phase(&api, "tpl", "stopped").await?;
    let start = api.call("POST", "/api/v1/vms/tpl/start", None).await?;
    if start.status == 202 {
        // The start route accepted the request (its owner has no template check yet): the
        // template's node still never runs it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (_, t) = vm_phase(&api, "tpl").await?;
        assert_eq!(t["status"]["phase"], "stopped", "{t}");
    } else {
        assert_eq!(start.status, 409, "{}", start.body);
        assert!(
            start.body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("template"),
            "{}",
            start.body
        );
    }
    let tpl_node = vm_phase(&api, "tpl").await?.1["status"]["node"]
        .as_str()
        .context("tpl node")?
        .to_string();
    let state = dev.virsh(&tpl_node, &["domstate", "tpl"])?;
    assert!(state.contains("shut off"), "{state}");
    ok(
        dev.cli(&["vm", "create", "vm3", "--from-template", "tpl", "--wait"])?,
        "vm create --from-template",
    )?;
    let vm3 = wait_phase(&api, "vm3", "running").await?;
    assert_eq!(vm3["spec"]["template"], Value::Null, "{vm3}");
    assert_eq!(
        volume(&api, "vm3-root").await?["spec"]["clone_of"],
        "tpl-root"
    );

    // Delete with keep_disks: the clone's disks stay as standalone volumes, and one of them
    // becomes another VM's disk.
    let del = api
        .call("DELETE", "/api/v1/vms/vm2?keep_disks=true", None)
        .await?;
    assert_eq!(del.status, 202, "{}", del.body);
    wait_gone(&api, "/api/v1/vms/vm2").await?;
    let kept = volume(&api, "vm2-data").await?;
    assert_eq!(kept["status"]["owner"], Value::Null, "{kept}");
    assert_eq!(kept["status"]["attached_to"], Value::Null, "{kept}");
    assert!(v2file.exists());
    let vm4 = api
        .call(
            "POST",
            "/api/v1/vms",
            Some(vm_body(
                "vm4",
                json!([root, {"name": "data", "source": {"type": "volume", "volume": "vm2-data"}}]),
            )),
        )
        .await?;
    assert_eq!(vm4.status, 201, "{}", vm4.body);
    let vm4 = wait_phase(&api, "vm4", "running").await?;
    assert_eq!(vm4["status"]["node"], node.as_str(), "the volume pins vm4");
    let xml = dev.virsh(&node, &["dumpxml", "vm4"])?;
    assert!(xml.contains("vm2-data.qcow2"), "{xml}");
    let taken = api
        .call(
            "POST",
            "/api/v1/vms",
            Some(vm_body(
                "vm5",
                json!([{"name": "data", "source": {"type": "volume", "volume": "vm2-data"}}]),
            )),
        )
        .await?;
    assert_field(&taken, 400, "spec.disks[0].source.volume", "volume in use");
    let busy = api.call("DELETE", "/api/v1/volumes/vm2-data", None).await?;
    assert_eq!(busy.status, 409, "{}", busy.body);
    ok(
        dev.cli(&["vm", "delete", "vm4", "--wait"])?,
        "vm delete vm4",
    )?;
    assert!(v2file.exists(), "an attached volume outlives the VM");
    assert_eq!(
        volume(&api, "vm2-data").await?["status"]["attached_to"],
        Value::Null
    );
    assert_eq!(
        api.call("GET", "/api/v1/volumes/vm4-root", None)
            .await?
            .status,
        404
    );
    let del = api.call("DELETE", "/api/v1/volumes/vm2-data", None).await?;
    assert!(del.status == 204 || del.status == 202, "{}", del.body);
    wait_gone(&api, "/api/v1/volumes/vm2-data").await?;
    assert!(!v2file.exists());

    // A standalone volume on the other node.
    let other = if node == "node1" { "node2" } else { "node1" };
    let out = ok(
        dev.cli(&[
            "volume",
            "create",
            "scratch",
            "--pool",
            &format!("{other}-local"),
            "--size",
            "32MiB",
            "--wait",
            "-o",
            "json",
        ])?,
        "volume create",
    )?;
    let scratch: Value = serde_json::from_str(&out)?;
    assert_eq!(scratch["status"]["phase"], "ready", "{scratch}");
    let sfile = volumes_dir(&dev, other).join("scratch.qcow2");
    assert_eq!(img_info(&sfile)?["virtual-size"], 32 * MIB);
    ok(
        dev.cli(&["volume", "resize", "scratch", "--size", "48MiB"])?,
        "volume resize",
    )?;
    assert_eq!(img_info(&sfile)?["virtual-size"], 48 * MIB, "grown offline");
    ok(dev.cli(&["volume", "delete", "scratch"])?, "volume delete")?;
    wait_gone(&api, "/api/v1/volumes/scratch").await?;
    assert!(!sfile.exists());

    ok(
        dev.cli(&["volume", "delete", "vm2-root"])?,
        "volume delete vm2-root",
    )?;
    wait_gone(&api, "/api/v1/volumes/vm2-root").await?;

    // Deleting VMs removes the volumes they own, files included.
    for name in ["vm1", "vm3", "tpl"] {
        ok(dev.cli(&["vm", "delete", name, "--wait"])?, "vm delete")?;
    }
    let vols = api.call("GET", "/api/v1/volumes", None).await?;
    assert_eq!(vols.body["items"], json!([]), "{}", vols.body);
    for n in ["node1", "node2"] {
        let left: Vec<_> = std::fs::read_dir(volumes_dir(&dev, n))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "files left on {n}: {left:?}");
    }
    let snaps = api.call("GET", "/api/v1/vms/vm1/snapshots", None).await?;
    assert_eq!(snaps.status, 404, "{}", snaps.body);
    Ok(())
}
