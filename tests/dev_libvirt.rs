//! Every dev-cluster node runs its own hypervisor: a libvirtd (and virtlogd) in the node's
//! network and mount namespaces, over libvirt directories of its own. A domain defined on one
//! node is not on the other; a started guest's QEMU runs in its node's network namespace;
//! the nodes reach each other's libvirt over `qemu+tcp://<node address>/system` (and the host
//! cannot); live migration moves the guest from one hypervisor to the other and back;
//! `dev stop --kill` kills the guest with its node; `dev down` leaves no mount and no process.
//!
//! Needs root and real libvirt (libvirt-daemon-system, qemu-system-x86); guests run under TCG.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use keel_tests::{keel, mounts_under, pid_alive, pids_with_cmdline, wait_until, DevCluster};
use serde_json::Value;

/// A name no other test or host guest uses.
const DOMAIN: &str = "keel-test-libvirt-tiny";

/// A guest with no disk: SeaBIOS finds nothing to boot and keeps trying, which is running.
fn domain_xml() -> String {
    format!(
        "<domain type='qemu'>\n  <name>{DOMAIN}</name>\n  <memory unit='MiB'>32</memory>\n  \
         <vcpu>1</vcpu>\n  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n    \
         <boot dev='network'/>\n  </os>\n  <devices>\n    <memballoon model='none'/>\n  \
         </devices>\n</domain>\n"
    )
}

/// `keel dev exec NODE -- ARGS` on this cluster (the state goes first: after `--` it would be
/// part of the command).
fn exec(dev: &DevCluster, node: &str, args: &[&str]) -> Result<String> {
    let state = dev.state.to_string_lossy().to_string();
    let mut all = vec!["dev", "--state", &state, "exec", node, "--"];
    all.extend_from_slice(args);
    keel(&all)
}

/// `virsh -c URI ARGS` inside NODE.
fn virsh(dev: &DevCluster, node: &str, uri: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["virsh", "-c", uri];
    all.extend_from_slice(args);
    exec(dev, node, &all)
}

fn local(dev: &DevCluster, node: &str, args: &[&str]) -> Result<String> {
    virsh(dev, node, "qemu:///system", args)
}

fn lists_domain(list: &str) -> bool {
    list.split_whitespace().any(|w| w == DOMAIN)
}

fn address(dev: &DevCluster, node: &str) -> Result<String> {
    dev.info
        .nodes
        .iter()
        .find(|n| n.name == node)
        .map(|n| n.address.clone())
        .with_context(|| format!("no node {node}"))
}

fn status(dev: &DevCluster) -> Result<Value> {
    Ok(serde_json::from_str(&dev.dev(&["status"])?)?)
}

fn node_status(dev: &DevCluster, node: &str) -> Result<Value> {
    let s = status(dev)?;
    s["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["name"] == node))
        .cloned()
        .with_context(|| format!("{node} is not in `dev status`: {s}"))
}

fn node_pids(dev: &DevCluster, node: &str) -> Result<Vec<i32>> {
    Ok(node_status(dev, node)?["pids"]
        .as_array()
        .context("pids")?
        .iter()
        .filter_map(|p| p.as_i64().and_then(|p| i32::try_from(p).ok()))
        .collect())
}

/// The pid of the guest's QEMU, whichever node runs it.
fn qemu_pids() -> Vec<i32> {
    pids_with_cmdline(&format!("guest={DOMAIN}"))
}

/// True when `pid` is in `node`'s network namespace.
fn in_netns_of(dev: &DevCluster, pid: i32, node: &str) -> Result<bool> {
    let ns = node_status(dev, node)?["netns"]
        .as_str()
        .context("netns")?
        .to_string();
    let want = std::fs::metadata(Path::new("/run/netns").join(&ns))?;
    let got = std::fs::metadata(format!("/proc/{pid}/ns/net"))?;
    Ok(want.dev() == got.dev() && want.ino() == got.ino())
}

/// The host UUID in `virsh capabilities`.
fn host_uuid(capabilities: &str) -> Result<String> {
    let start = capabilities.find("<uuid>").context("no <uuid>")? + "<uuid>".len();
    let len = capabilities[start..]
        .find("</uuid>")
        .context("no </uuid>")?;
    Ok(capabilities[start..start + len].to_string())
}

async fn wait_state(dev: &DevCluster, node: &str, want: &str) -> Result<()> {
    wait_until(
        &format!("{DOMAIN} {want} on {node}"),
        Duration::from_secs(30),
        || async {
            let s = local(dev, node, &["domstate", DOMAIN])?;
            Ok((s.trim() == want).then_some(()))
        },
    )
    .await
}

/// Live-migrates the guest peer to peer from `from` to `to`, as keeld will.
async fn migrate(dev: &DevCluster, from: &str, to: &str) -> Result<()> {
    let dest = format!("qemu+tcp://{}/system", address(dev, to)?);
    local(
        dev,
        from,
        &[
            "migrate",
            "--live",
            "--p2p",
            "--persistent",
            "--undefinesource",
            DOMAIN,
            &dest,
        ],
    )?;
    wait_state(dev, to, "running").await?;
    ensure!(
        !lists_domain(&local(dev, from, &["list", "--all"])?),
        "{DOMAIN} is still on {from} after migrating to {to}"
    );
    let pids = qemu_pids();
    ensure!(pids.len() == 1, "one QEMU for {DOMAIN}, found {pids:?}");
    ensure!(
        in_netns_of(dev, pids[0], to)?,
        "after migrating to {to}, QEMU {} is not in {to}'s network namespace",
        pids[0]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_has_its_own_hypervisor_and_migration_moves_guests() -> Result<()> {
    if !Path::new("/usr/sbin/libvirtd").exists() {
        bail!("libvirtd is missing: install the packages in system/virt/APT_PACKAGES");
    }
    let dev = DevCluster::up("libvirt", 2, "10.77.4.0/24", 18446)?;
    eprintln!("formed with libvirt on every node in {:?}", dev.formed_in);
    for n in ["node1", "node2"] {
        let s = node_status(&dev, n)?;
        ensure!(s["libvirt"] == true, "{n}: {s}");
        ensure!(s["libvirtd_pid"].is_i64(), "{n}: no libvirtd: {s}");
    }

    // Two hypervisors: a domain defined on node1 is not on node2 (whose default URI, as plain
    // `virsh` picks it, is its own libvirt).
    let xml = dev.state.join("tiny.xml");
    std::fs::write(&xml, domain_xml())?;
    local(&dev, "node1", &["define", &xml.to_string_lossy()])?;
    let list1 = local(&dev, "node1", &["list", "--all"])?;
    ensure!(
        lists_domain(&list1),
        "node1 does not list {DOMAIN}:\n{list1}"
    );
    let list2 = exec(&dev, "node2", &["virsh", "list", "--all"])?;
    ensure!(
        !lists_domain(&list2),
        "node2 lists node1's {DOMAIN}:\n{list2}"
    );

    // Started under TCG, it runs on node1 only, its QEMU in node1's network namespace.
    local(&dev, "node1", &["start", DOMAIN])?;
    wait_state(&dev, "node1", "running").await?;
    ensure!(!lists_domain(&local(&dev, "node2", &["list", "--all"])?));
    let qemu = qemu_pids();
    ensure!(qemu.len() == 1, "one QEMU for {DOMAIN}, found {qemu:?}");
    ensure!(
        in_netns_of(&dev, qemu[0], "node1")?,
        "QEMU {} is not in node1's network namespace",
        qemu[0]
    );

    // The migration path: node1 reaches node2's libvirt over TCP, a different host to libvirt.
    let node2 = address(&dev, "node2")?;
    let peer = format!("qemu+tcp://{node2}/system");
    let remote = virsh(&dev, "node1", &peer, &["list", "--all"])?;
    ensure!(
        !lists_domain(&remote),
        "{peer} lists node1's guest:\n{remote}"
    );
    let uuid1 = host_uuid(&local(&dev, "node1", &["capabilities"])?)?;
    let uuid2 = host_uuid(&virsh(&dev, "node1", &peer, &["capabilities"])?)?;
    ensure!(
        uuid1 != uuid2,
        "node1 and node2 share the host UUID {uuid1}"
    );
    // The host itself is not let in (no authentication on that port).
    let target: SocketAddr = format!("{node2}:16509").parse()?;
    ensure!(
        TcpStream::connect_timeout(&target, Duration::from_millis(1500)).is_err(),
        "the host reached node2's libvirtd at {target}"
    );

    // Live migration really moves the guest between the hypervisors, and back.
    migrate(&dev, "node1", "node2").await?;
    migrate(&dev, "node2", "node1").await?;

    // A power cut of node1 takes its guest with it; node2's hypervisor is untouched.
    let node1_pids = node_pids(&dev, "node1")?;
    let qemu = qemu_pids();
    ensure!(
        qemu.len() == 1 && node1_pids.contains(&qemu[0]),
        "QEMU {qemu:?} is not among node1's processes {node1_pids:?}"
    );
    dev.dev(&["stop", "node1", "--kill"])?;
    let left: Vec<i32> = node1_pids
        .iter()
        .copied()
        .filter(|&p| pid_alive(p))
        .collect();
    ensure!(
        left.is_empty(),
        "node1's processes {left:?} survived `stop --kill`"
    );
    ensure!(
        qemu_pids().is_empty(),
        "QEMU of {DOMAIN} survived: {:?}",
        qemu_pids()
    );
    local(&dev, "node2", &["version"])?;

    // `dev down` leaves no mount under the state directory and no process of any node.
    let node2_pids = node_pids(&dev, "node2")?;
    ensure!(!node2_pids.is_empty());
    dev.dev(&["down"])?;
    let mounts = mounts_under(&dev.state);
    ensure!(
        mounts.is_empty(),
        "mounts left under {}: {mounts:?}",
        dev.state.display()
    );
    let left: Vec<i32> = node2_pids
        .iter()
        .copied()
        .filter(|&p| pid_alive(p))
        .collect();
    ensure!(
        left.is_empty(),
        "node2's processes {left:?} survived `dev down`"
    );
    ensure!(
        !dev.state.join("node1/libvirt").exists() && !dev.state.join("node2/libvirt").exists(),
        "the nodes' libvirt directories are left"
    );
    Ok(())
}
