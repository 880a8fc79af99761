//! The guest agent on a real dev cluster under TCG, with the tiny guest's Debian
//! qemu-guest-agent: the VM's `status.ips` shows the address the guest gave its NIC and the
//! `GuestAgentConnected` condition is true; `virsh qemu-agent-command` answers guest-ping in the
//! node; a snapshot of the running VM freezes and thaws the guest's file systems (the guest's
//! fsfreeze hook prints both on its serial console, and the snapshot records `frozen`); a guest
//! that ignores the ACPI power button still stops gracefully, through the agent (the guest
//! prints that its agent shut it down, and no forced power-off is recorded); a stopped VM has
//! no addresses and no connected agent.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keel_tests::{wait_until, Api, DevCluster};
use serde_json::{json, Value};

const VM: &str = "ag1";
const BRIDGE: &str = "br-vms";

async fn vm(api: &Api) -> Result<Value> {
    let a = api.call("GET", &format!("/api/v1/vms/{VM}"), None).await?;
    anyhow::ensure!(a.status == 200, "{}", a.body);
    Ok(a.body)
}

fn condition<'a>(v: &'a Value, kind: &str) -> Option<&'a Value> {
    v["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
}

fn agent_connected(v: &Value) -> bool {
    condition(v, "GuestAgentConnected").is_some_and(|c| c["status"] == "true")
}

fn serial(dev: &DevCluster, node: &str) -> String {
    dev.exec(
        node,
        &["cat", &format!("/var/log/libvirt/qemu/{VM}-serial.log")],
    )
    .unwrap_or_default()
}

/// The address the tiny guest gives its first NIC: 192.0.2.N, N from the MAC's last byte.
fn expected_ip(mac: &str) -> Result<String> {
    let last = mac.rsplit(':').next().context("MAC")?;
    let b = u8::from_str_radix(last, 16)?;
    Ok(format!("192.0.2.{}", b % 254 + 1))
}

fn agent_command(dev: &DevCluster, node: &str, cmd: &Value) -> Result<Value> {
    let out = dev.virsh(node, &["qemu-agent-command", VM, &cmd.to_string()])?;
    Ok(serde_json::from_str(out.trim())?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_agent_reports_addresses_freezes_snapshots_and_stops_the_guest() -> Result<()> {
    let dev = DevCluster::up("agent", 1, "10.77.13.0/24", 18455)?;
    let api = dev.client(&dev.info.endpoint).await?;
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
        "--network",
        BRIDGE,
        "--wait",
    ])?;
    anyhow::ensure!(out.status.success(), "{out:?}");
    let node = vm(&api).await?["status"]["node"]
        .as_str()
        .context("node")?
        .to_string();
    let iflist = dev.virsh(&node, &["domiflist", VM])?;
    let mac = iflist
        .split_whitespace()
        .find(|w| w.starts_with("52:54:00:"))
        .context("the NIC's MAC in domiflist")?
        .to_string();
    let want_ip = expected_ip(&mac)?;

    // The agent answers, and the guest's address reaches the VM's status.
    let started = Instant::now();
    let v = wait_until(
        "the guest's address and a connected agent in the status",
        Duration::from_secs(180),
        || async {
            let v = vm(&api).await?;
            let has_ip = v["status"]["ips"]
                .as_array()
                .is_some_and(|ips| ips.iter().any(|i| i == want_ip.as_str()));
            Ok((has_ip && agent_connected(&v)).then_some(v))
        },
    )
    .await?;
    eprintln!(
        "agent: address {want_ip} and GuestAgentConnected in the status {:?} after running",
        started.elapsed()
    );
    let ips = v["status"]["ips"].as_array().context("ips")?;
    assert!(
        ips.iter().all(|i| i
            .as_str()
            .is_some_and(|s| !s.starts_with("127.") && s != "::1")),
        "no loopback addresses: {ips:?}"
    );
    // The CLI shows them too.
    let show = dev.cli(&["vm", "show", VM])?;
    assert!(show.status.success(), "{show:?}");
    assert!(
        String::from_utf8_lossy(&show.stdout).contains(&want_ip),
        "{show:?}"
    );
    let list = dev.cli(&["vm", "list"])?;
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(list.contains("IPS") && list.contains(&want_ip), "{list}");

    // The agent answers virsh inside the node as well.
    let pong = agent_command(&dev, &node, &json!({"execute": "guest-ping"}))?;
    assert_eq!(pong, json!({"return": {}}));

    // A snapshot of the running VM freezes the guest's file systems and thaws them.
    let snap = api
        .call(
            "POST",
            &format!("/api/v1/vms/{VM}/snapshots"),
            Some(json!({"name": "quiet1"})),
        )
        .await?;
    assert_eq!(snap.status, 201, "{}", snap.body);
    assert_eq!(snap.body["status"]["phase"], "ready", "{}", snap.body);
    assert_eq!(snap.body["status"]["live"], true, "{}", snap.body);
    assert_eq!(snap.body["status"]["frozen"], true, "{}", snap.body);
    wait_until(
        "the guest's fsfreeze hook ran for freeze and thaw",
        Duration::from_secs(30),
        || async {
            let log = serial(&dev, &node);
            let freeze = log.find("keel-guest fsfreeze freeze");
            let thaw = log.find("keel-guest fsfreeze thaw");
            Ok(matches!((freeze, thaw), (Some(f), Some(t)) if f < t).then_some(()))
        },
    )
    .await?;
    // Thawed: the agent takes commands a frozen guest refuses, and the guest still counts.
    let status = agent_command(&dev, &node, &json!({"execute": "guest-fsfreeze-status"}))?;
    assert_eq!(status["return"], "thawed", "{status}");
    let before = dev.serial_counters(&node, VM).last().copied().unwrap_or(0);
    wait_until(
        "the guest counts after the snapshot",
        Duration::from_secs(60),
        || async {
            let now = dev.serial_counters(&node, VM).last().copied().unwrap_or(0);
            Ok((now > before).then_some(()))
        },
    )
    .await?;

    // Make the guest ignore the ACPI power button (a file its button handler checks, written
    // through the agent), and check that it does.
    let h = agent_command(
        &dev,
        &node,
        &json!({"execute": "guest-file-open",
                "arguments": {"path": "/run/keel-ignore-acpi", "mode": "w"}}),
    )?;
    let handle = h["return"].as_i64().context("file handle")?;
    agent_command(
        &dev,
        &node,
        &json!({"execute": "guest-file-close", "arguments": {"handle": handle}}),
    )?;
    dev.virsh(&node, &["shutdown", "--mode", "acpi", VM])?;
    wait_until(
        "the guest ignores the power button",
        Duration::from_secs(60),
        || async {
            Ok(serial(&dev, &node)
                .contains("keel-guest power button ignored")
                .then_some(()))
        },
    )
    .await?;
    assert_eq!(dev.virsh(&node, &["domstate", VM])?.trim(), "running");

    // A graceful stop still powers it off: through the agent, not by force after 30 s.
    let asked = Instant::now();
    let out = dev.cli(&["vm", "stop", VM, "--wait"])?;
    anyhow::ensure!(out.status.success(), "{out:?}");
    let took = asked.elapsed();
    eprintln!("agent: graceful stop of an ACPI-deaf guest took {took:?}");
    let v = vm(&api).await?;
    assert_eq!(v["status"]["phase"], "stopped", "{v}");
    assert!(
        condition(&v, "ForcedOff").is_none(),
        "no forced power-off: {v}"
    );
    assert!(
        serial(&dev, &node).contains("keel-guest agent shutdown"),
        "the guest's agent ran its shutdown"
    );
    assert!(
        took < Duration::from_secs(30),
        "stopped before the 30 s force deadline, took {took:?}"
    );
    assert_eq!(dev.virsh(&node, &["domstate", VM])?.trim(), "shut off");

    // Stopped: no addresses, no agent.
    wait_until(
        "addresses cleared and the agent disconnected",
        Duration::from_secs(60),
        || async {
            let v = vm(&api).await?;
            let empty = v["status"]["ips"].as_array().is_some_and(|a| a.is_empty());
            let gone = condition(&v, "GuestAgentConnected").is_some_and(|c| c["status"] == "false");
            Ok((empty && gone).then_some(()))
        },
    )
    .await?;
    // The agent of a stopped VM cannot be asked.
    assert!(dev
        .virsh(
            &node,
            &["qemu-agent-command", VM, r#"{"execute":"guest-ping"}"#]
        )
        .is_err());
    Ok(())
}
