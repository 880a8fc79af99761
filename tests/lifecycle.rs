//! VM lifecycle on a real dev cluster under TCG: reboot restarts the guest (its serial
//! counter starts again from 1, same QEMU process), pause stops the counter and resume
//! continues it, force-stop powers off at once, a keeld killed with SIGKILL and started again
//! leaves the running guest (same QEMU process) alone, a domain defined behind Keel's back is
//! reported in the node's status and never touched, a VM whose domain vanished is `lost`, and
//! bad requests get a clear 4xx.

use std::time::Duration;

use anyhow::{Context, Result};
use keel_tests::{wait_until, Api, DevCluster};
use serde_json::Value;

const VM: &str = "life";

async fn vm(api: &Api) -> Result<Value> {
    let a = api.call("GET", &format!("/api/v1/vms/{VM}"), None).await?;
    anyhow::ensure!(a.status == 200, "{}", a.body);
    Ok(a.body)
}

async fn wait_phase(api: &Api, phase: &str) -> Result<Value> {
    wait_until(
        &format!("{VM} {phase}"),
        Duration::from_secs(120),
        || async {
            let v = vm(api).await?;
            Ok((v["status"]["phase"] == phase).then_some(v))
        },
    )
    .await
}

async fn action(api: &Api, action: &str) -> Result<keel_tests::Answer> {
    api.call("POST", &format!("/api/v1/vms/{VM}/{action}"), None)
        .await
}

fn paused(v: &Value) -> bool {
    v["status"]["conditions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Paused" && c["status"] == "true")
        })
        .unwrap_or(false)
}

fn qemu_pids(vm: &str) -> Vec<i32> {
    keel_tests::pids_with_cmdline(&format!("guest={vm},"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_reboot_pause_restart_unmanaged_lost() -> Result<()> {
    let dev = DevCluster::up("lifecycle", 1, "10.77.8.0/24", 18450)?;
    let api = dev.client(&dev.info.endpoint).await?;
    dev.import_guest_image("tiny")?;
    let out = dev.cli(&[
        "vm", "create", VM, "--image", "tiny", "--cpus", "1", "--memory", "128MiB", "--wait",
    ])?;
    anyhow::ensure!(out.status.success(), "{out:?}");
    let node = vm(&api).await?["status"]["node"]
        .as_str()
        .context("node")?
        .to_string();
    wait_until("the guest counts", Duration::from_secs(120), || async {
        Ok((dev.serial_counters(&node, VM).last().copied().unwrap_or(0) >= 3).then_some(()))
    })
    .await?;
    let qemu = qemu_pids(VM);
    assert_eq!(qemu.len(), 1, "one QEMU for {VM}: {qemu:?}");

    // Bad requests: a clear 4xx, nothing changes.
    let a = api.call("POST", "/api/v1/vms/nosuch/reboot", None).await?;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = action(&api, "dance").await?;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = api.call("POST", "/api/v1/vms/Not_DNS/reboot", None).await?;
    assert_eq!(a.status, 400, "{}", a.body);

    // Reboot: the same QEMU process, the guest's counter starts again.
    let before = dev.serial_counters(&node, VM);
    let a = action(&api, "reboot").await?;
    assert_eq!(a.status, 202, "{}", a.body);
    let seen = before.len();
    wait_until(
        "the counter restarts after reboot",
        Duration::from_secs(120),
        || async {
            let now = dev.serial_counters(&node, VM);
            let after = now.get(seen..).unwrap_or_default().to_vec();
            Ok(after
                .windows(2)
                .any(|w| w[1] < w[0])
                .then_some(())
                .or_else(|| (after.first() == Some(&1) && before.last() > Some(&1)).then_some(())))
        },
    )
    .await?;
    assert_eq!(qemu_pids(VM), qemu, "a reboot keeps the QEMU process");
    let v = wait_phase(&api, "running").await?;
    assert_eq!(v["status"]["actions"]["reboot"], 1, "{v}");

    // Pause: the counter stops; resume: it continues from where it was.
    let a = action(&api, "pause").await?;
    assert_eq!(a.status, 202, "{}", a.body);
    wait_until("paused", Duration::from_secs(60), || async {
        Ok(paused(&vm(&api).await?).then_some(()))
    })
    .await?;
    assert!(dev.virsh(&node, &["domstate", VM])?.contains("paused"));
    let frozen = dev.serial_counters(&node, VM);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        dev.serial_counters(&node, VM),
        frozen,
        "a paused guest prints nothing"
    );
    assert_eq!(vm(&api).await?["status"]["phase"], "running");
    let a = action(&api, "resume").await?;
    assert_eq!(a.status, 202, "{}", a.body);
    let last = *frozen.last().context("counters")?;
    wait_until(
        "the counter continues after resume",
        Duration::from_secs(60),
        || async {
            let now = dev.serial_counters(&node, VM);
            Ok((now.len() > frozen.len() && now[frozen.len()] == last + 1).then_some(()))
        },
    )
    .await?;
    assert!(!paused(&vm(&api).await?));

    // keeld killed and started again: the guest runs on, untouched.
    let node_state = dev.state.join(&node).join("state");
    let keelds = keel_tests::pids_with_cmdline(&node_state.to_string_lossy());
    let keelds: Vec<i32> = keelds
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .map(|c| c.contains("keeld"))
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(keelds.len(), 1, "one keeld for {node}: {keelds:?}");
    let killed = std::process::Command::new("kill")
        .args(["-9", &keelds[0].to_string()])
        .status()?;
    assert!(killed.success());
    wait_until("keeld gone", Duration::from_secs(10), || async {
        Ok((!keel_tests::pid_alive(keelds[0])).then_some(()))
    })
    .await?;
    dev.dev(&["start", &node])?;
    let api = wait_until(
        "the API after the restart",
        Duration::from_secs(60),
        || async { Ok(dev.client(&dev.info.endpoint).await.ok()) },
    )
    .await?;
    // Several reconcile rounds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(qemu_pids(VM), qemu, "the same QEMU process runs the guest");
    assert_eq!(vm(&api).await?["status"]["phase"], "running");
    let n = dev.serial_counters(&node, VM).len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        dev.serial_counters(&node, VM).len() > n,
        "the guest still counts"
    );

    // A domain defined behind Keel's back is reported, never touched.
    let xml = dev.state.join("stray.xml");
    std::fs::write(
        &xml,
        "<domain type='qemu'><name>stray</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>",
    )?;
    dev.virsh(&node, &["define", &xml.to_string_lossy()])?;
    wait_until("stray reported", Duration::from_secs(30), || async {
        let n = api
            .call("GET", &format!("/api/v1/nodes/{node}"), None)
            .await?;
        Ok(n.body["status"]["unmanaged_domains"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "stray"))
            .then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        dev.virsh(&node, &["list", "--all", "--name"])?
            .lines()
            .any(|l| l.trim() == "stray"),
        "the unmanaged domain is left alone"
    );
    let n = api
        .call("GET", &format!("/api/v1/nodes/{node}"), None)
        .await?;
    assert!(
        !n.body["status"]["unmanaged_domains"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == VM)),
        "{}",
        n.body
    );

    // Force off: at once, no ACPI.
    let a = action(&api, "force-stop").await?;
    assert_eq!(a.status, 202, "{}", a.body);
    wait_phase(&api, "stopped").await?;
    assert!(dev.virsh(&node, &["domstate", VM])?.contains("shut off"));
    let a = action(&api, "reboot").await?;
    assert_eq!(a.status, 409, "a stopped VM does not reboot: {}", a.body);
    let a = action(&api, "pause").await?;
    assert_eq!(a.status, 409, "{}", a.body);

    // A VM whose domain vanishes is lost.
    let a = action(&api, "start").await?;
    assert_eq!(a.status, 202, "{}", a.body);
    wait_phase(&api, "running").await?;
    // Undefined first (it runs on as a transient domain), then destroyed: gone for good,
    // with no moment in which the reconciler could start it again.
    dev.virsh(&node, &["undefine", VM])?;
    dev.virsh(&node, &["destroy", VM])?;
    wait_phase(&api, "lost").await?;
    Ok(())
}
