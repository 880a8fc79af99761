//! Live migration and maintenance on a real 3-node dev cluster under TCG: bad targets get a
//! clear 4xx and change nothing; a cancelled migration leaves the VM running where it was; a
//! live migration moves the guest with its disk (copy storage) while its serial counter goes
//! on (read from the serial log on both sides), leaves no domain on the source, and its task
//! reaches done; a cancel during the transfer leaves it where it was and the destination clean;
//! maintenance mode empties a node; a stopped VM moves offline and starts on its new node.

use std::time::Duration;

use anyhow::{Context, Result};
use keel_tests::{wait_until, Api, DevCluster};
use serde_json::{json, Value};

const VM: &str = "mover";

async fn vm(api: &Api) -> Result<Value> {
    let a = api.call("GET", &format!("/api/v1/vms/{VM}"), None).await?;
    anyhow::ensure!(a.status == 200, "{}", a.body);
    Ok(a.body)
}

async fn task_done(api: &Api, task: &str) -> Result<Value> {
    wait_until(
        &format!("task {task} finished"),
        Duration::from_secs(300),
        || async {
            let t = api
                .call("GET", &format!("/api/v1/tasks/{task}"), None)
                .await?;
            anyhow::ensure!(t.status == 200, "{}", t.body);
            let phase = t.body["status"]["phase"].as_str().unwrap_or("");
            Ok(matches!(phase, "succeeded" | "failed" | "cancelled").then_some(t.body))
        },
    )
    .await
}

async fn migrate(api: &Api, to: Option<&str>) -> Result<keel_tests::Answer> {
    let body = match to {
        Some(t) => json!({"to": t}),
        None => json!({}),
    };
    api.call("POST", &format!("/api/v1/vms/{VM}/migrate"), Some(body))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_cancel_and_maintenance() -> Result<()> {
    let dev = DevCluster::up("migration", 3, "10.77.9.0/24", 18451)?;
    let api = dev.client(&dev.info.endpoint).await?;
    // The dev cluster's libvirt daemons talk plain TCP on the private node network.
    let s = api.put_setting("migration.transport", json!("tcp")).await?;
    assert_eq!(s.status, 200, "{}", s.body);
    dev.import_guest_image("tiny")?;
    let out = dev.cli(&[
        "vm",
        "create",
        VM,
        "--image",
        "tiny",
        "--cpus",
        "1",
        "--memory",
        "128MiB",
        // A cloud-init seed: a read-only CD-ROM libvirt does not copy, so every destination
        // must make its own.
        "--hostname",
        VM,
        "--wait",
    ])?;
    anyhow::ensure!(out.status.success(), "{out:?}");
    let source = vm(&api).await?["status"]["node"]
        .as_str()
        .context("node")?
        .to_string();
    let others: Vec<String> = ["node1", "node2", "node3"]
        .iter()
        .filter(|n| **n != source)
        .map(|n| n.to_string())
        .collect();
    wait_until("the guest counts", Duration::from_secs(120), || async {
        Ok((dev
            .serial_counters(&source, VM)
            .last()
            .copied()
            .unwrap_or(0)
            >= 3)
            .then_some(()))
    })
    .await?;

    // Bad targets: 4xx, and nothing changes.
    let a = migrate(&api, Some("nosuch")).await?;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["error"]["field"], "to", "{}", a.body);
    let a = migrate(&api, Some(&source)).await?;
    assert_eq!(a.status, 400, "{}", a.body);
    let a = api
        .call("POST", &format!("/api/v1/nodes/{}/cordon", others[0]), None)
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = migrate(&api, Some(&others[0])).await?;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("cordon"),
        "{}",
        a.body
    );
    let a = api
        .call(
            "POST",
            &format!("/api/v1/nodes/{}/uncordon", others[0]),
            None,
        )
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = api
        .call(
            "POST",
            &format!("/api/v1/vms/{VM}/migrate"),
            Some(json!({"dest": "node2"})),
        )
        .await?;
    assert_eq!(a.status, 400, "{}", a.body);
    let tasks = api.call("GET", "/api/v1/tasks", None).await?;
    assert_eq!(tasks.body["items"], json!([]), "{}", tasks.body);
    let v = vm(&api).await?;
    assert_eq!(v["status"]["node"], source.as_str());
    assert_eq!(v["status"]["phase"], "running");

    // Cancelled at once: the VM stays where it was, running.
    let a = migrate(&api, Some(&others[0])).await?;
    assert_eq!(a.status, 202, "{}", a.body);
    let task = a.body["metadata"]["name"]
        .as_str()
        .context("task")?
        .to_string();
    let c = api
        .call("POST", &format!("/api/v1/tasks/{task}/cancel"), None)
        .await?;
    assert_eq!(c.status, 202, "{}", c.body);
    let t = task_done(&api, &task).await?;
    assert_eq!(t["status"]["phase"], "cancelled", "{t}");
    let v = wait_until("the VM running again", Duration::from_secs(60), || async {
        let v = vm(&api).await?;
        Ok((v["status"]["phase"] == "running").then_some(v))
    })
    .await?;
    assert_eq!(v["status"]["node"], source.as_str(), "{v}");
    assert!(dev.domains(&source)?.contains(&VM.to_string()));
    assert!(!dev.domains(&others[0])?.contains(&VM.to_string()));
    let again = api
        .call("POST", &format!("/api/v1/tasks/{task}/cancel"), None)
        .await?;
    assert_eq!(again.status, 409, "{}", again.body);

    // Cancelled while libvirt moves it (bandwidth capped, so the transfer takes a while):
    // the libvirt job is aborted, the guest runs on where it was, and the destination removes
    // the disks it prepared.
    let s = api.put_setting("migration.bandwidth_mib", json!(1)).await?;
    assert_eq!(s.status, 200, "{}", s.body);
    let a = migrate(&api, Some(&others[0])).await?;
    assert_eq!(a.status, 202, "{}", a.body);
    let task = a.body["metadata"]["name"]
        .as_str()
        .context("task")?
        .to_string();
    let seen = wait_until(
        "the transfer under way",
        Duration::from_secs(120),
        || async {
            let t = api
                .call("GET", &format!("/api/v1/tasks/{task}"), None)
                .await?;
            let phase = t.body["status"]["phase"].as_str().unwrap_or("");
            anyhow::ensure!(
                !matches!(phase, "succeeded" | "failed" | "cancelled"),
                "the capped transfer ended before it could be cancelled: {}",
                t.body
            );
            Ok((t.body["status"]["step"] == "transferring").then_some(t.body))
        },
    )
    .await?;
    eprintln!("cancelling during the transfer: {}", seen["status"]);
    let c = api
        .call("POST", &format!("/api/v1/tasks/{task}/cancel"), None)
        .await?;
    assert_eq!(c.status, 202, "{}", c.body);
    let t = task_done(&api, &task).await?;
    assert_eq!(t["status"]["phase"], "cancelled", "{t}");
    let v = wait_until("the VM running again", Duration::from_secs(60), || async {
        let v = vm(&api).await?;
        Ok((v["status"]["phase"] == "running").then_some(v))
    })
    .await?;
    assert_eq!(v["status"]["node"], source.as_str(), "{v}");
    assert!(dev.domains(&source)?.contains(&VM.to_string()));
    assert!(!dev.domains(&others[0])?.contains(&VM.to_string()));
    wait_until(
        "the destination's prepared disk removed",
        Duration::from_secs(60),
        || async {
            let volumes = dev.state.join(&others[0]).join("state/pool/volumes");
            let left: Vec<String> = std::fs::read_dir(&volumes)?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|f| f.starts_with(VM))
                .collect();
            Ok(left.is_empty().then_some(()))
        },
    )
    .await?;
    let n = dev.serial_counters(&source, VM).len();
    wait_until(
        "the guest counts on where it was",
        Duration::from_secs(60),
        || async { Ok((dev.serial_counters(&source, VM).len() > n + 1).then_some(())) },
    )
    .await?;
    let d = api
        .call("DELETE", "/api/v1/settings/migration.bandwidth_mib", None)
        .await?;
    assert_eq!(d.status, 204, "{}", d.body);

    // Live migration: the counter goes on on the destination, the source is empty.
    let dest = others[1].clone();
    let before = dev.serial_counters(&source, VM);
    // Through the CLI, which follows the task's progress until it is done.
    let out = dev.cli(&["vm", "migrate", VM, "--to", &dest, "--wait", "-o", "json"])?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    anyhow::ensure!(out.status.success(), "keel vm migrate: {stderr}");
    eprintln!("keel vm migrate said:\n{stderr}");
    assert!(stderr.contains("succeeded 100%"), "{stderr}");
    let printed: Value = serde_json::from_slice(&out.stdout)?;
    let task = printed["metadata"]["name"]
        .as_str()
        .context("task")?
        .to_string();
    let t = task_done(&api, &task).await?;
    assert_eq!(t["status"]["phase"], "succeeded", "{t}");
    assert_eq!(t["status"]["progress"], 100, "{t}");
    let v = vm(&api).await?;
    assert_eq!(v["status"]["node"], dest.as_str(), "{v}");
    assert_eq!(v["status"]["phase"], "running", "{v}");
    assert!(
        !dev.domains(&source)?.contains(&VM.to_string()),
        "gone from {source}"
    );
    assert!(dev.domains(&dest)?.contains(&VM.to_string()));
    let last_before = *before.last().context("counters")?;
    let after = wait_until(
        "the counter on the destination",
        Duration::from_secs(60),
        || async {
            let c = dev.serial_counters(&dest, VM);
            Ok((c.len() >= 3).then_some(c))
        },
    )
    .await?;
    eprintln!("counter before {last_before}, on the destination {after:?}");
    assert!(
        after[0] > last_before && after.windows(2).all(|w| w[1] == w[0] + 1),
        "the counter continues (not from 1): before {last_before}, after {after:?}"
    );
    let source_after = dev.serial_counters(&source, VM);
    assert!(
        source_after.last() < after.first(),
        "the destination continues the source's count: {source_after:?} then {after:?}"
    );

    // Maintenance empties the node, and exit puts it back in service.
    let out = dev.cli(&["node", "maintenance", &dest, "--wait", "-o", "json"])?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    anyhow::ensure!(out.status.success(), "keel node maintenance: {stderr}");
    eprintln!("keel node maintenance said:\n{stderr}");
    let n = api
        .call("GET", &format!("/api/v1/nodes/{dest}"), None)
        .await?
        .body;
    assert_eq!(n["spec"]["cordoned"], true, "{n}");
    assert_eq!(n["status"]["maintenance"]["phase"], "empty", "{n}");
    assert_eq!(n["status"]["maintenance"]["vms_remaining"], 0, "{n}");
    let v = vm(&api).await?;
    assert_ne!(v["status"]["node"], dest.as_str(), "{v}");
    assert_eq!(v["status"]["phase"], "running", "{v}");
    assert!(!dev.domains(&dest)?.contains(&VM.to_string()));
    let a = api
        .call(
            "POST",
            &format!("/api/v1/nodes/{dest}/maintenance-exit"),
            None,
        )
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["spec"]["cordoned"], false, "{}", a.body);
    assert!(a.body["status"]["maintenance"].is_null(), "{}", a.body);

    // A stopped VM moves too (offline: its disk goes along, it stays stopped), and starts
    // on its new node.
    let out = dev.cli(&["vm", "stop", VM, "--wait"])?;
    anyhow::ensure!(
        out.status.success(),
        "keel vm stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let here = vm(&api).await?["status"]["node"]
        .as_str()
        .context("node")?
        .to_string();
    let there = ["node1", "node2", "node3"]
        .into_iter()
        .find(|n| *n != here)
        .context("another node")?
        .to_string();
    let a = migrate(&api, Some(&there)).await?;
    assert_eq!(a.status, 202, "{}", a.body);
    let task = a.body["metadata"]["name"]
        .as_str()
        .context("task")?
        .to_string();
    let t = task_done(&api, &task).await?;
    assert_eq!(t["status"]["phase"], "succeeded", "{t}");
    let v = vm(&api).await?;
    assert_eq!(v["status"]["node"], there.as_str(), "{v}");
    assert_eq!(v["status"]["phase"], "stopped", "{v}");
    assert!(
        !dev.domains(&here)?.contains(&VM.to_string()),
        "gone from {here}"
    );
    // Defined there and off (moved paused, so its vCPUs never ran; then powered off).
    wait_until(
        "the moved domain shut off on its new node",
        Duration::from_secs(60),
        || async {
            let state = dev.virsh(&there, &["domstate", VM])?;
            Ok((state.trim() == "shut off").then_some(()))
        },
    )
    .await?;
    let log_before = dev.serial_counters(&there, VM);
    let out = dev.cli(&["vm", "start", VM, "--wait"])?;
    anyhow::ensure!(
        out.status.success(),
        "keel vm start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = vm(&api).await?;
    assert_eq!(v["status"]["node"], there.as_str(), "{v}");
    assert_eq!(v["status"]["phase"], "running", "{v}");
    wait_until(
        "the moved guest counting on its new node",
        Duration::from_secs(90),
        || async {
            let now = dev.serial_counters(&there, VM);
            Ok((now.len() >= 2 && now != log_before).then_some(()))
        },
    )
    .await?;
    Ok(())
}
