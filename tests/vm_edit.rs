//! Changing existing VMs on a real dev cluster (libvirt under TCG, the tiny guest): a running
//! VM gets more vCPUs and memory live, disks and NICs are plugged in and out of it live (the
//! tap and OVS port go with the NIC, the volume stays standalone), a stopped VM's resize
//! shows after its start, a stopped VM is renamed and starts under its new name, and every
//! bad request gets the right 4xx and changes nothing.

use std::time::Duration;

use anyhow::{Context, Result};
use keel_tests::{Api, DevCluster};
use serde_json::{json, Value};

fn ok(out: std::process::Output, what: &str) -> Result<String> {
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Runs a command inside a node's namespaces.
fn in_node(dev: &DevCluster, node: &str, args: &[&str]) -> Result<String> {
    let state = dev.state.to_string_lossy().to_string();
    let mut all = vec!["dev", "--state", &state, "exec", node, "--"];
    all.extend_from_slice(args);
    keel_tests::keel(&all)
}

fn virsh(dev: &DevCluster, node: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["virsh", "-c", "qemu:///system"];
    all.extend_from_slice(args);
    in_node(dev, node, &all)
}

const BRIDGE: &str = "br-vms";
const LONG: Duration = Duration::from_secs(120);

/// The guest has printed at least `n` counter lines on its serial console (its log file).
async fn counted(dev: &DevCluster, node: &str, vm: &str, n: usize) -> Result<()> {
    let log = format!("/var/log/libvirt/qemu/{vm}-serial.log");
    keel_tests::wait_until(&format!("{vm} counting on its console"), LONG, || async {
        let text = in_node(dev, node, &["cat", &log]).unwrap_or_default();
        Ok((text.matches("keel-guest counter").count() >= n).then_some(()))
    })
    .await
}

async fn vm(api: &Api, name: &str) -> Result<Value> {
    let a = api
        .call("GET", &format!("/api/v1/vms/{name}"), None)
        .await?;
    anyhow::ensure!(a.status == 200, "GET {name}: {} {}", a.status, a.body);
    Ok(a.body)
}

/// OVS ports on the node's bridge and the `vnet*` links that exist.
fn taps(dev: &DevCluster, node: &str) -> Result<(usize, usize)> {
    let ports = in_node(dev, node, &["ovs-vsctl", "list-ports", BRIDGE])?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let links = in_node(dev, node, &["ip", "-o", "link", "show"])?
        .lines()
        .filter(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|n| n.trim().starts_with("vnet"))
        })
        .count();
    Ok((ports, links))
}

/// The node's running domain `name` has `vcpus` vCPUs and `kib` KiB of memory.
async fn live_size(dev: &DevCluster, node: &str, name: &str, vcpus: u32, kib: u64) -> Result<()> {
    keel_tests::wait_until(
        &format!("{name} with {vcpus} vCPUs and {kib} KiB"),
        LONG,
        || async {
            let count = virsh(dev, node, &["vcpucount", name, "--live", "--active"])?;
            let info = virsh(dev, node, &["dominfo", name])?;
            let mem_ok = info
                .lines()
                .any(|l| l.starts_with("Max memory:") && l.contains(&format!(" {kib} KiB")));
            Ok((count.trim() == vcpus.to_string() && mem_ok).then_some(()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_and_stopped_vms_change_as_asked() -> Result<()> {
    let dev = DevCluster::up("vmedit", 1, "10.77.12.0/24", 18454)?;
    let api = dev.client(&dev.info.endpoint).await?;
    dev.import_guest_image("tiny")?;
    ok(
        dev.cli(&[
            "vm",
            "create",
            "ed1",
            "--image",
            "tiny",
            "--cpus",
            "1",
            "--memory",
            "128MiB",
            "--network",
            BRIDGE,
            "--wait",
        ])?,
        "vm create",
    )?;
    let node = vm(&api, "ed1").await?["status"]["node"]
        .as_str()
        .context("ed1 has a node")?
        .to_string();
    // The guest is up (its ACPI answers hot-plug requests) and the VM reports its limits.
    counted(&dev, &node, "ed1", 2).await?;
    let limits = keel_tests::wait_until("ed1's hot-add limits", LONG, || async {
        let v = vm(&api, "ed1").await?;
        Ok(v["status"]["hotplug"]
            .is_object()
            .then(|| v["status"]["hotplug"].clone()))
    })
    .await?;
    let max_cpus = limits["max_cpus"].as_u64().context("max_cpus")?;
    assert!(max_cpus >= 2, "{limits}");
    assert_eq!(
        limits["max_memory"],
        json!((128u64 + 1024) << 20),
        "{limits}"
    );
    live_size(&dev, &node, "ed1", 1, 128 * 1024).await?;

    // Bad requests: the right 4xx, and nothing changes.
    let before = vm(&api, "ed1").await?;
    let version = before["metadata"]["version"].as_u64().context("version")?;
    for (method, path, body, status, expect) in [
        (
            "PATCH",
            "/api/v1/vms/ed1",
            json!({"memory": "64MiB"}),
            409,
            "shrinking memory of a running VM is not supported",
        ),
        (
            "PATCH",
            "/api/v1/vms/ed1",
            json!({"cpus": 1, "memory": "96MiB"}),
            409,
            "stop it first",
        ),
        ("PATCH", "/api/v1/vms/ed1", json!({"cpus": 0}), 400, "cpus"),
        (
            "PATCH",
            "/api/v1/vms/ed1",
            json!({"cpus": max_cpus + 1}),
            409,
            "at most",
        ),
        (
            "PATCH",
            "/api/v1/vms/ed1",
            json!({"cpus": 2, "version": version - 1}),
            409,
            "version",
        ),
        (
            "PATCH",
            "/api/v1/vms/ed1",
            json!({"cpu": 2}),
            400,
            "unknown field",
        ),
        (
            "POST",
            "/api/v1/vms/ed1/rename",
            json!({"new_name": "ed9"}),
            409,
            "must be stopped",
        ),
        (
            "DELETE",
            "/api/v1/vms/ed1/disks/root",
            Value::Null,
            409,
            "boot disk",
        ),
        (
            "DELETE",
            "/api/v1/vms/ed1/disks/nosuch",
            Value::Null,
            404,
            "no disk",
        ),
        (
            "POST",
            "/api/v1/vms/ed1/disks",
            json!({"name": "net0", "source": {"type": "empty", "size": "64MiB"}}),
            409,
            "already has",
        ),
        (
            "POST",
            "/api/v1/vms/ed1/disks",
            json!({"name": "big", "source": {"type": "empty", "size": "100TiB"}}),
            400,
            "",
        ),
    ] {
        let body_opt = (!body.is_null()).then(|| body.clone());
        let a = api.call(method, path, body_opt).await?;
        assert_eq!(a.status, status, "{method} {path} {body}: {}", a.body);
        let text = a.body["error"].to_string();
        assert!(
            text.contains(expect),
            "{method} {path} {body}: want {expect:?} in {text}"
        );
    }
    let after = vm(&api, "ed1").await?;
    assert_eq!(
        after["spec"], before["spec"],
        "bad requests changed nothing"
    );
    assert!(api.call("GET", "/api/v1/vms/ed9", None).await?.status == 404);

    // Resize a running VM: more vCPUs and memory, live; the guest keeps counting.
    let json_out = ok(
        dev.cli(&[
            "vm", "resize", "ed1", "--cpus", "2", "--memory", "256MiB", "--wait", "-o", "json",
        ])?,
        "vm resize",
    )?;
    let resized: Value = serde_json::from_str(&json_out)?;
    assert_eq!(resized["spec"]["cpus"], 2, "{resized}");
    live_size(&dev, &node, "ed1", 2, 256 * 1024).await?;
    let seen = in_node(
        &dev,
        &node,
        &["cat", "/var/log/libvirt/qemu/ed1-serial.log"],
    )?
    .matches("keel-guest counter")
    .count();
    counted(&dev, &node, "ed1", seen + 2).await?;

    // A disk and a NIC come and go on the running VM.
    ok(
        dev.cli(&[
            "vm", "disk", "attach", "ed1", "--size", "64MiB", "--name", "data1", "--wait",
        ])?,
        "disk attach",
    )?;
    keel_tests::wait_until("data1 in ed1's domain", LONG, || async {
        Ok(virsh(&dev, &node, &["domblklist", "ed1"])?
            .contains("ed1-data1")
            .then_some(()))
    })
    .await?;
    let vol = api.call("GET", "/api/v1/volumes/ed1-data1", None).await?;
    assert_eq!(vol.body["status"]["attached_to"], "ed1", "{}", vol.body);
    ok(
        dev.cli(&[
            "vm",
            "nic",
            "attach",
            "ed1",
            "--network",
            BRIDGE,
            "--name",
            "net1",
            "--wait",
        ])?,
        "nic attach",
    )?;
    keel_tests::wait_until("two NICs on ed1", LONG, || async {
        let ifs = virsh(&dev, &node, &["domiflist", "ed1"])?;
        Ok((ifs.matches(BRIDGE).count() == 2 && taps(&dev, &node)? == (2, 2)).then_some(()))
    })
    .await?;
    ok(
        dev.cli(&["vm", "nic", "detach", "ed1", "net1", "--wait"])?,
        "nic detach",
    )?;
    keel_tests::wait_until("one NIC on ed1, its tap and port gone", LONG, || async {
        let ifs = virsh(&dev, &node, &["domiflist", "ed1"])?;
        Ok((ifs.matches(BRIDGE).count() == 1 && taps(&dev, &node)? == (1, 1)).then_some(()))
    })
    .await?;
    ok(
        dev.cli(&["vm", "disk", "detach", "ed1", "data1", "--wait"])?,
        "disk detach",
    )?;
    keel_tests::wait_until("data1 out of ed1, its volume standalone", LONG, || async {
        let gone = !virsh(&dev, &node, &["domblklist", "ed1"])?.contains("ed1-data1");
        let v = api.call("GET", "/api/v1/volumes/ed1-data1", None).await?;
        let free = v.status == 200
            && v.body["status"]["attached_to"].is_null()
            && v.body["status"]["owner"].is_null();
        Ok((gone && free).then_some(()))
    })
    .await?;
    let show = vm(&api, "ed1").await?;
    assert_eq!(
        show["spec"]["disks"].as_array().map(Vec::len),
        Some(1),
        "{show}"
    );
    assert_eq!(
        show["spec"]["nics"].as_array().map(Vec::len),
        Some(1),
        "{show}"
    );

    // A stopped VM takes any size; it shows once it starts.
    ok(dev.cli(&["vm", "stop", "ed1", "--wait"])?, "vm stop")?;
    ok(
        dev.cli(&[
            "vm", "resize", "ed1", "--cpus", "1", "--memory", "192MiB", "--wait",
        ])?,
        "stopped resize",
    )?;
    ok(dev.cli(&["vm", "start", "ed1", "--wait"])?, "vm start")?;
    live_size(&dev, &node, "ed1", 1, 192 * 1024).await?;
    ok(dev.cli(&["vm", "stop", "ed1", "--wait"])?, "vm stop")?;

    // Rename: refused onto an existing name or a bad one; a stopped VM moves to its new name.
    ok(
        dev.cli(&[
            "vm",
            "create",
            "ed2",
            "--image",
            "tiny",
            "--cpus",
            "1",
            "--memory",
            "64MiB",
            "--stopped",
            "--wait",
        ])?,
        "vm create ed2",
    )?;
    let spec_before = vm(&api, "ed1").await?["spec"].clone();
    let taken = api
        .call(
            "POST",
            "/api/v1/vms/ed1/rename",
            Some(json!({"new_name": "ed2"})),
        )
        .await?;
    assert_eq!(taken.status, 409, "{}", taken.body);
    assert_eq!(
        taken.body["error"]["code"], "already_exists",
        "{}",
        taken.body
    );
    let bad = api
        .call(
            "POST",
            "/api/v1/vms/ed1/rename",
            Some(json!({"new_name": "Not_DNS"})),
        )
        .await?;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.body["error"]["field"], "new_name", "{}", bad.body);
    assert_eq!(
        vm(&api, "ed1").await?["spec"],
        spec_before,
        "refused renames change nothing"
    );
    ok(
        dev.cli(&["vm", "rename", "ed1", "ed3", "-o", "json"])?,
        "vm rename",
    )?;
    assert_eq!(api.call("GET", "/api/v1/vms/ed1", None).await?.status, 404);
    keel_tests::wait_until("ed1's domain gone, ed3's defined", LONG, || async {
        let names = virsh(&dev, &node, &["list", "--all", "--name"])?;
        let has = |n: &str| names.lines().any(|l| l.trim() == n);
        Ok((!has("ed1") && has("ed3")).then_some(()))
    })
    .await?;
    ok(dev.cli(&["vm", "start", "ed3", "--wait"])?, "start ed3")?;
    let blk = virsh(&dev, &node, &["domblklist", "ed3"])?;
    assert!(blk.contains("ed1-root"), "ed3 keeps its volume: {blk}");
    counted(&dev, &node, "ed3", 2).await?;
    let root = api.call("GET", "/api/v1/volumes/ed1-root", None).await?;
    assert_eq!(root.body["status"]["owner"], "ed3", "{}", root.body);

    for name in ["ed3", "ed2"] {
        ok(dev.cli(&["vm", "delete", name, "--wait"])?, "vm delete")?;
    }
    // ed3 owned ed1-root (deleted with it); data1 was left standalone.
    keel_tests::wait_until("ed1-root deleted with ed3", LONG, || async {
        Ok((api
            .call("GET", "/api/v1/volumes/ed1-root", None)
            .await?
            .status
            == 404)
            .then_some(()))
    })
    .await?;
    assert_eq!(
        api.call("GET", "/api/v1/volumes/ed1-data1", None)
            .await?
            .status,
        200
    );
    let left = virsh(&dev, &node, &["list", "--all", "--name"])?;
    assert!(left.trim().is_empty(), "domains left: {left}");
    Ok(())
}
