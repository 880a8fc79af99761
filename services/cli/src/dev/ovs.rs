//! Each dev-cluster node's own Open vSwitch: `ovsdb-server` and `ovs-vswitchd` in the node's
//! network and mount namespaces, with the userspace (`netdev`) datapath, so no kernel module
//! is needed. libvirt inside the node plugs guest taps into the node's bridges with its own
//! `ovs-vsctl`, which finds this database at the default socket under the node's `/run`.
//!
//! ```text
//!  <state>/nodeN/ovs/conf.db     the node's database (kept across `dev stop`/`start`)
//!  /run/openvswitch/db.sock      in the node's /run tmpfs
//!  ovsdb-server ◀── ovs-vswitchd (netdev datapath) ◀── ovs-vsctl (keeld, libvirt)
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use super::host;
use super::procs;
use super::state::{DevNode, DevPaths};

/// The database server.
pub const OVSDB_SERVER: &str = "/usr/sbin/ovsdb-server";
/// The switch daemon.
pub const OVS_VSWITCHD: &str = "/usr/sbin/ovs-vswitchd";
/// The schema a new database is made from.
pub const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
/// The run directory inside a node (its own /run).
const RUN_DIR: &str = "/run/openvswitch";

/// Whether Open vSwitch is installed on this host.
pub fn installed() -> bool {
    [OVSDB_SERVER, OVS_VSWITCHD, SCHEMA]
        .iter()
        .all(|p| Path::new(p).exists())
}

/// A node's Open vSwitch directory.
pub fn dir(paths: &DevPaths, node: &str) -> PathBuf {
    paths.node_dir(node).join("ovs")
}

fn running(node: &DevNode, name: &str) -> bool {
    let Some(ns) = node.netns.as_deref() else {
        return false;
    };
    procs::ns_id(&host::netns_path(ns))
        .map(|id| !procs::named(&procs::pids_in_netns(id), name).is_empty())
        .unwrap_or(false)
}

fn inside(node: &DevNode, args: &[&str]) -> anyhow::Result<String> {
    let ns = node
        .netns
        .as_deref()
        .ok_or_else(|| anyhow!("{} has no network namespace", node.name))?;
    let mnt = node
        .mount_ns
        .as_deref()
        .ok_or_else(|| anyhow!("{} has no mount namespace", node.name))?;
    let out = Command::new("nsenter")
        .arg(format!("--net={}", host::netns_path(ns).display()))
        .arg(format!("--mount={}", mnt.display()))
        .arg("--")
        .args(args)
        .env_remove("KEEL_TOKEN")
        .env_remove("KEEL_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} on {}", args.join(" "), node.name))?;
    if !out.status.success() {
        bail!(
            "{} on {} failed: {}",
            args.join(" "),
            node.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts whichever of the node's OVS daemons is not running (making its database the first
/// time) and waits until `ovs-vsctl show` answers.
pub fn start_node(paths: &DevPaths, node: &DevNode, timeout: Duration) -> anyhow::Result<()> {
    let dir = dir(paths, &node.name);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = dir.join("conf.db");
    if !db.exists() {
        let out = Command::new("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg(SCHEMA)
            .output()
            .context("running ovsdb-tool (install openvswitch-switch)")?;
        if !out.status.success() {
            bail!(
                "ovsdb-tool create {}: {}",
                db.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let db_s = db.to_string_lossy().into_owned();
    let log = |name: &str| format!("--log-file={}", dir.join(format!("{name}.log")).display());
    inside(node, &["mkdir", "-p", RUN_DIR])?;
    if !running(node, "ovsdb-server") {
        inside(
            node,
            &[
                OVSDB_SERVER,
                &db_s,
                &format!("--remote=punix:{RUN_DIR}/db.sock"),
                &format!("--pidfile={RUN_DIR}/ovsdb-server.pid"),
                &log("ovsdb-server"),
                "--detach",
            ],
        )?;
        inside(node, &["ovs-vsctl", "--timeout=10", "--no-wait", "init"])?;
    }
    if !running(node, "ovs-vswitchd") {
        inside(
            node,
            &[
                OVS_VSWITCHD,
                &format!("--pidfile={RUN_DIR}/ovs-vswitchd.pid"),
                &log("ovs-vswitchd"),
                "--detach",
            ],
        )?;
    }
    let deadline = Instant::now() + timeout;
    loop {
        match inside(node, &["ovs-vsctl", "--timeout=2", "show"]) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "Open vSwitch on {} does not answer after {} s (logs in {})",
                    node.name,
                    timeout.as_secs(),
                    dir.display()
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Starts Open vSwitch on every node of `nodes`.
pub fn start(paths: &DevPaths, nodes: &[DevNode], timeout: Duration) -> anyhow::Result<()> {
    for node in nodes {
        start_node(paths, node, timeout)?;
    }
    Ok(())
}
