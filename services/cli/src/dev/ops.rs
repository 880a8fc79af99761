//! The dev cluster's operations: up, down, add, stop, start, exec, status.
//!
//! ```text
//!  up:  dev.json ─▶ <state>/ns (private bind) ─▶ bridge kbr-<id> (.1)
//!        └▶ per node: netns keel-<id>-nodeN ─▶ veth kv<id>nN ⇄ eth0 (.10+N) ─▶ mount ns
//!           (<state>/ns/nodeN.mnt: tmpfs /run, sysfs /sys, the host's /sys/fs/cgroup,
//!           libvirt directories, nftables for libvirt's ports) ─▶ answer.toml ─▶ keeld
//!        ─▶ wait: GET /cluster shows every node ready ┐ at once ─▶ ca.pem ─▶ forwarder ─▶ JSON
//!           ‖ virtlogd + libvirtd per node answer     ┘
//!  down: forwarder ─▶ SIGKILL per netns (keeld, libvirt daemons, QEMU) ─▶ mount ns files
//!        (their bind mounts go with them) ─▶ veths ─▶ netns ─▶ bridge ─▶ ns dir
//! ```
//! Each node's libvirt is in [`libvirt`]; `--no-libvirt` (or a host without libvirt) leaves
//! it out.
//! Each object is written to `dev.json` right after it is made, so a failed `up` (which tears
//! itself down) or an interrupted one (`keel dev down` later) leaves nothing behind.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use keel_model::{ClusterStatus, NodeState};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::host::{self, run};
use super::libvirt;
use super::ovs;
use super::plan::{self, NodeAnswer, Subnet};
use super::procs;
use super::state::{self, DevNode, DevPaths, DevState, Forwarder, DEV_STATE_VERSION};
use crate::cli::UpArgs;
use crate::client::ApiClient;

/// The admin user of every dev cluster.
pub const ADMIN_USER: &str = "admin";

/// How long `dev stop` waits for keeld to exit after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// How long killing a node's processes may take.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// Least pause before logging in to a node again after a failed login.
const LOGIN_RETRY: Duration = Duration::from_millis(500);

/// Interval between formation checks.
const POLL: Duration = Duration::from_millis(200);

/// How long a node's libvirt may take to answer (the first QEMU capabilities probe included).
const LIBVIRT_DEADLINE: Duration = Duration::from_secs(90);

/// The host's cgroup hierarchy, bound into every node.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Where the cgroup tree waits in a node while its sysfs is mounted.
const CGROUP_PARKING: &str = "/run/keel-dev-cgroup";

/// What `keel dev up` prints: everything a client needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevInfo {
    /// The forwarded endpoint on the host.
    pub endpoint: String,
    /// The nodes.
    pub nodes: Vec<DevInfoNode>,
    /// Admin user.
    pub username: String,
    /// Admin password.
    pub password: String,
    /// The cluster CA, PEM.
    pub ca_cert: PathBuf,
}

/// One node in [`DevInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevInfoNode {
    /// Node name (as the API reports it).
    pub name: String,
    /// Management address.
    pub address: String,
    /// API URL.
    pub api: String,
}

impl From<&DevNode> for DevInfoNode {
    fn from(n: &DevNode) -> Self {
        Self {
            name: n.name.clone(),
            address: n.address.to_string(),
            api: n.api(),
        }
    }
}

/// The paths of an existing state directory (canonical), or `None` if it does not exist.
pub fn existing_paths(state_dir: &Path) -> anyhow::Result<Option<DevPaths>> {
    match fs::canonicalize(state_dir) {
        Ok(p) => Ok(Some(DevPaths::new(p))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("the state directory {}", state_dir.display())),
    }
}

fn require_root() -> anyhow::Result<()> {
    if !host::is_root() {
        bail!("the dev cluster needs root (it creates network and mount namespaces); run it with sudo");
    }
    Ok(())
}

/// Loads `dev.json` or says there is no dev cluster.
pub fn load_required(paths: &DevPaths) -> anyhow::Result<DevState> {
    state::load(paths)?.ok_or_else(|| {
        anyhow!(
            "no dev cluster is recorded in {}; start one with `keel dev up --state {}`",
            paths.root().display(),
            paths.root().display()
        )
    })
}

fn find_node<'a>(state: &'a DevState, name: &str) -> anyhow::Result<&'a DevNode> {
    state.node(name).ok_or_else(|| {
        let names: Vec<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
        anyhow!(
            "there is no node {name} in this dev cluster (it has {})",
            names.join(", ")
        )
    })
}

/// The identity of a node's network namespace.
fn node_netns(node: &DevNode) -> anyhow::Result<procs::NsId> {
    let ns = node.netns.as_deref().ok_or_else(|| {
        anyhow!(
            "{} has no network namespace (was `up` interrupted?)",
            node.name
        )
    })?;
    procs::ns_id(&host::netns_path(ns))
        .with_context(|| format!("the network namespace {ns} of {}", node.name))
}

/// Pids of the node's keeld, if it runs.
fn keeld_pids(node: &DevNode) -> Vec<i32> {
    node_netns(node)
        .map(|ns| procs::keelds(&procs::pids_in_netns(ns)))
        .unwrap_or_default()
}

/// The keeld to run: `--keeld`/`KEEL_KEELD`, else the one next to this `keel`.
fn find_keeld(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidate = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("finding this program's path")?
            .parent()
            .map(|d| d.join("keeld"))
            .ok_or_else(|| anyhow!("this program's path has no directory"))?,
    };
    let meta = fs::metadata(&candidate).map_err(|_| {
        anyhow!(
            "keeld is not at {}; build it (`cargo build -p keel-keeld`) or name it with --keeld or KEEL_KEELD",
            candidate.display()
        )
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!("{} is not an executable file", candidate.display());
    }
    fs::canonicalize(&candidate).with_context(|| format!("resolving {}", candidate.display()))
}

/// The address a client on the host connects to for `listen`.
fn connect_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, listen.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    }
}

fn save(paths: &DevPaths, s: &DevState) -> anyhow::Result<()> {
    state::save(paths, s).map_err(Into::into)
}

// ---------------------------------------------------------------------------------------------
// up

/// `keel dev up`, each node with its own libvirt when libvirt is installed.
pub async fn up(state_dir: &Path, args: &UpArgs) -> anyhow::Result<DevInfo> {
    up_with(state_dir, args, false).await
}

/// `keel dev up [--no-libvirt]`.
pub async fn up_with(state_dir: &Path, args: &UpArgs, no_libvirt: bool) -> anyhow::Result<DevInfo> {
    require_root()?;
    let keeld = find_keeld(args.keeld.as_deref())?;
    fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let paths = DevPaths::new(fs::canonicalize(state_dir)?);
    if state::load(&paths)?.is_some() {
        bail!(
            "a dev cluster is already recorded in {}; remove it first with `keel dev down --state {}`",
            paths.dev_json().display(),
            paths.root().display()
        );
    }
    let id = plan::dev_id(paths.root());
    let subnet = Subnet::from_cidr(&args.subnet)?;
    subnet.node_address(args.nodes)?;
    preflight(&id, &subnet, args)?;

    let mut st = DevState {
        version: DEV_STATE_VERSION,
        id,
        subnet: subnet
            .cidr()
            .parse()
            .map_err(|e: keel_model::ValidationError| anyhow!(e))?,
        expected_nodes: args.nodes,
        join_secret: plan::random_secret(),
        admin_password: plan::random_password(),
        keeld,
        ns_dir_mounted: false,
        bridge: None,
        forwarder: None,
        nodes: Vec::new(),
    };
    save(&paths, &st)?;
    tracing::info!(state = %paths.root().display(), id = %st.id, subnet = %subnet.cidr(), nodes = args.nodes, "creating the dev cluster");
    let started = Instant::now();
    // Ctrl-C while waiting for formation tears down what was made, like any other failure.
    let outcome = tokio::select! {
        r = build(&paths, &mut st, &subnet, args, libvirt::wanted(no_libvirt)) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    match outcome {
        Ok(info) => {
            tracing::info!(seconds = format!("{:.1}", started.elapsed().as_secs_f64()), endpoint = %info.endpoint, "the dev cluster is up");
            Ok(info)
        }
        Err(e) => {
            tracing::info!("dev up failed; removing what it made");
            if let Err(down) = teardown(&paths, &mut st) {
                return Err(e.context(format!(
                    "and cleaning up failed too: {down:#}; run `keel dev down --state {}`",
                    paths.root().display()
                )));
            }
            Err(e)
        }
    }
}

/// Checks that nothing on the host is in the way before anything is made.
fn preflight(id: &str, subnet: &Subnet, args: &UpArgs) -> anyhow::Result<()> {
    let bridge = plan::bridge_name(id);
    if host::link_exists(&bridge) {
        bail!("the interface {bridge} already exists but is not recorded here; another dev cluster with a similar state directory? remove it with `ip link del {bridge}`");
    }
    for (ifname, addr) in host::host_ipv4_networks()? {
        let Ok(cidr) = addr.parse::<keel_model::Cidr>() else {
            continue;
        };
        let Ok(theirs) = Subnet::from_cidr(&cidr) else {
            continue;
        };
        if theirs.overlaps(subnet) {
            bail!(
                "the subnet {} overlaps {addr} on {ifname}; pick another with --subnet",
                subnet.cidr()
            );
        }
    }
    for n in 1..=args.nodes {
        let ns = plan::netns_name(id, &plan::node_name(n));
        if host::netns_exists(&ns) {
            bail!("the network namespace {ns} already exists but is not recorded here; remove it with `ip netns del {ns}`");
        }
    }
    std::net::TcpListener::bind(args.forward).with_context(|| {
        format!(
            "the forward address {} is not free; pick another with --forward",
            args.forward
        )
    })?;
    Ok(())
}

async fn build(
    paths: &DevPaths,
    st: &mut DevState,
    subnet: &Subnet,
    args: &UpArgs,
    with_libvirt: bool,
) -> anyhow::Result<DevInfo> {
    // A private mount to hold the mount namespace files: a namespace file may only be bound
    // on a mount that does not propagate into the namespace itself.
    let ns_dir = paths.ns_dir();
    fs::create_dir_all(&ns_dir).with_context(|| format!("creating {}", ns_dir.display()))?;
    let ns_dir_s = ns_dir.to_string_lossy().to_string();
    if !host::is_mountpoint(&ns_dir) {
        run("mount", &["--bind", &ns_dir_s, &ns_dir_s])?;
    }
    st.ns_dir_mounted = true;
    save(paths, st)?;
    run("mount", &["--make-private", &ns_dir_s])?;

    // The bridge, with multicast snooping off so discovery beacons reach every node.
    let bridge = plan::bridge_name(&st.id);
    run(
        "ip",
        &[
            "link",
            "add",
            "name",
            &bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ],
    )?;
    st.bridge = Some(bridge.clone());
    save(paths, st)?;
    let gw = format!("{}/{}", subnet.gateway()?, subnet.prefix());
    run("ip", &["addr", "add", &gw, "dev", &bridge])?;
    run("ip", &["link", "set", &bridge, "up"])?;

    for n in 1..=args.nodes {
        let name = plan::node_name(n);
        st.nodes.push(DevNode {
            name: name.clone(),
            index: n,
            address: subnet.node_address(n)?,
            netns: None,
            veth: None,
            mount_ns: None,
            join_secret: None,
            libvirt: with_libvirt,
        });
        save(paths, st)?;
        create_node(paths, st, &name)?;
    }

    // The hypervisors start while the cluster forms; either failing fails `up` at once.
    let want: Vec<String> = st.nodes.iter().map(|n| n.name.clone()).collect();
    let hypervisors = start_libvirt(paths, st.nodes.clone());
    let formed = wait_ready(paths, st, &want, Duration::from_secs(args.timeout));
    let ((_, via), _) = tokio::try_join!(formed, hypervisors)?;
    fs::copy(paths.node_ca(&via), paths.ca()).with_context(|| {
        format!(
            "copying the cluster CA from {}",
            paths.node_ca(&via).display()
        )
    })?;
    fs::set_permissions(paths.ca(), fs::Permissions::from_mode(0o644))?;
    if with_libvirt {
        dev_settings(paths, st, &via).await?;
    }

    start_forwarder(paths, st, args.forward)?;
    Ok(info(paths, st, args.forward))
}

/// Cluster settings only the dev cluster needs: its nodes' libvirt daemons take migrations
/// over plain TCP on the node network (fenced by nftables to the other nodes), not TLS.
async fn dev_settings(paths: &DevPaths, st: &DevState, via: &str) -> anyhow::Result<()> {
    let node = find_node(st, via)?;
    let mut c = ApiClient::new(&node.api(), Some(&paths.node_ca(via)))?;
    c.login(ADMIN_USER, &st.admin_password)
        .await
        .with_context(|| format!("logging in to {via}"))?;
    let body = keel_model::SettingValue {
        value: serde_json::json!("tcp"),
        version: None,
    };
    let _: keel_model::Setting = c
        .request(
            reqwest::Method::PUT,
            "/api/v1/settings/migration.transport",
            Some(&body),
        )
        .await
        .context("setting migration.transport = tcp for the dev cluster's libvirt daemons")?;
    Ok(())
}

/// Starts the libvirt daemons of those of `nodes` that have libvirt, on a blocking thread,
/// and waits until each answers.
async fn start_libvirt(paths: &DevPaths, nodes: Vec<DevNode>) -> anyhow::Result<()> {
    let nodes: Vec<DevNode> = nodes.into_iter().filter(|n| n.libvirt).collect();
    if nodes.is_empty() {
        return Ok(());
    }
    let paths = paths.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        libvirt::start(&paths, &nodes, LIBVIRT_DEADLINE)?;
        if ovs::installed() {
            ovs::start(&paths, &nodes, LIBVIRT_DEADLINE)?;
        }
        Ok(())
    })
    .await
    .context("the libvirt starter")??;
    Ok(())
}

fn info(paths: &DevPaths, st: &DevState, forward: SocketAddr) -> DevInfo {
    DevInfo {
        endpoint: format!("https://{}", connect_addr(forward)),
        nodes: st.nodes.iter().map(DevInfoNode::from).collect(),
        username: ADMIN_USER.to_string(),
        password: st.admin_password.clone(),
        ca_cert: paths.ca(),
    }
}

/// Makes node `name`'s namespaces, links and answer file, and starts its keeld. The node is
/// already in `st.nodes`; each object is recorded as soon as it exists.
fn create_node(paths: &DevPaths, st: &mut DevState, name: &str) -> anyhow::Result<()> {
    let subnet = Subnet::from_cidr(&st.subnet)?;
    let bridge = st
        .bridge
        .clone()
        .ok_or_else(|| anyhow!("the dev cluster has no bridge"))?;
    let node = find_node(st, name)?.clone();
    let ns = plan::netns_name(&st.id, name);
    let veth = plan::veth_name(&st.id, node.index);
    let set = |st: &mut DevState, f: &dyn Fn(&mut DevNode)| -> anyhow::Result<()> {
        if let Some(n) = st.node_mut(name) {
            f(n);
        }
        save(paths, st)
    };

    run("ip", &["netns", "add", &ns])?;
    set(st, &|n| n.netns = Some(ns.clone()))?;
    run(
        "ip",
        &[
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            plan::NODE_INTERFACE,
            "netns",
            &ns,
        ],
    )?;
    set(st, &|n| n.veth = Some(veth.clone()))?;
    run("ip", &["link", "set", &veth, "master", &bridge])?;
    run("ip", &["link", "set", &veth, "up"])?;
    let addr = format!("{}/{}", node.address, subnet.prefix());
    let gw = subnet.gateway()?.to_string();
    run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
    run(
        "ip",
        &["-n", &ns, "addr", "add", &addr, "dev", plan::NODE_INTERFACE],
    )?;
    run(
        "ip",
        &["-n", &ns, "link", "set", plan::NODE_INTERFACE, "up"],
    )?;
    run("ip", &["-n", &ns, "route", "add", "default", "via", &gw])?;

    // Fresh node directory: keeld state from an earlier cluster must not leak in.
    let node_dir = paths.node_dir(name);
    fs::create_dir_all(&node_dir)?;
    let node_state = paths.node_state(name);
    if node_state.exists() {
        fs::remove_dir_all(&node_state)
            .with_context(|| format!("removing the old {}", node_state.display()))?;
    }
    fs::create_dir_all(&node_state)?;

    // A persistent mount namespace, entered from the node's network namespace so that its
    // own sysfs shows the node's interfaces; a private /run for the node's daemons.
    let mnt = paths.mount_ns(name);
    fs::File::create(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
    let net_arg = format!("--net={}", host::netns_path(&ns).display());
    let mnt_file_arg = format!("--mount={}", mnt.display());
    run(
        "nsenter",
        &[
            &net_arg,
            "unshare",
            &mnt_file_arg,
            "--propagation",
            "private",
            "true",
        ],
    )?;
    set(st, &|n| n.mount_ns = Some(mnt.clone()))?;
    let inside = |args: &[&str]| -> Result<String, host::HostError> {
        let mut all = vec![net_arg.as_str(), mnt_file_arg.as_str(), "--"];
        all.extend_from_slice(args);
        run("nsenter", &all)
    };
    inside(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "mode=0755",
        "keel-run",
        "/run",
    ])?;
    // What systemd's tmpfiles would make on a real host: libvirt locks pty consoles in
    // /var/lock (= /run/lock).
    inside(&["mkdir", "-p", "-m", "1777", "/run/lock"])?;
    // The node's own sysfs hides the host's /sys/fs/cgroup, whose mounts libvirt (and QEMU)
    // still find in mountinfo: park the host's cgroup tree on /run, mount sysfs, move it back.
    let cgroup = Path::new(CGROUP_ROOT);
    if host::is_mountpoint(cgroup) {
        inside(&["mkdir", "-p", CGROUP_PARKING])?;
        inside(&["mount", "--rbind", CGROUP_ROOT, CGROUP_PARKING])?;
        inside(&["mount", "-t", "sysfs", "keel-sys", "/sys"])?;
        inside(&["mount", "--move", CGROUP_PARKING, CGROUP_ROOT])?;
        inside(&["rmdir", CGROUP_PARKING])?;
    } else {
        inside(&["mount", "-t", "sysfs", "keel-sys", "/sys"])?;
    }

    // The node's own libvirt directories over the host's, and its firewall; its daemons
    // start once every node exists (`libvirt::start`).
    if node.libvirt {
        libvirt::prepare(paths, &node, &subnet)?;
        // A new node gets a new switch database (its old bridges and ports are gone).
        let ovs_dir = ovs::dir(paths, name);
        if ovs_dir.exists() {
            fs::remove_dir_all(&ovs_dir)
                .with_context(|| format!("removing {}", ovs_dir.display()))?;
        }
        for (dir, target) in libvirt::binds(paths, name) {
            inside(&["mount", "--bind", &dir.to_string_lossy(), target])?;
        }
        let rules = libvirt::firewall_file(paths, name);
        run(
            "nsenter",
            &[&net_arg, "--", "nft", "-f", &rules.to_string_lossy()],
        )
        .context("applying the node's firewall for libvirt's ports (install nftables, or pass --no-libvirt)")?;
    }

    let secret = node
        .join_secret
        .clone()
        .unwrap_or_else(|| st.join_secret.clone());
    let answer = plan::answer_file(
        &subnet,
        &NodeAnswer {
            name,
            address: node.address,
            expected_nodes: st.expected_nodes,
            join_secret: &secret,
            admin_password: &st.admin_password,
        },
    )?;
    let text = answer.to_toml().context("rendering the answer file")?;
    write_private(&paths.answer(name), text.as_bytes())?;

    let node = find_node(st, name)?.clone();
    start_keeld(paths, st, &node)
}

fn write_private(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(body)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Starts keeld detached (own session, stdio to its log) in the node's namespaces and waits
/// until it runs there.
fn start_keeld(paths: &DevPaths, st: &DevState, node: &DevNode) -> anyhow::Result<()> {
    let ns = node
        .netns
        .as_deref()
        .ok_or_else(|| anyhow!("{} has no network namespace", node.name))?;
    let mnt = node
        .mount_ns
        .as_deref()
        .ok_or_else(|| anyhow!("{} has no mount namespace", node.name))?;
    let log_path = paths.log(&node.name);
    let mut log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    writeln!(
        log,
        "--- keel dev: starting keeld on {} at {now} ---",
        node.name
    )?;
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", host::netns_path(ns).display()))
        .arg(format!("--mount={}", mnt.display()))
        .arg("--")
        .arg("setsid")
        .arg(&st.keeld)
        .arg("--state-dir")
        .arg(paths.node_state(&node.name))
        .arg("--answer-file")
        .arg(paths.answer(&node.name))
        // The nodes share this machine's /etc: each writes the host files it generates from
        // settings under its own directory, and does not reload or rename the host.
        .arg("--etc-root")
        .arg(paths.node_dir(&node.name).join("root"))
        .arg("--host-actions")
        .arg("none")
        // The caller's API credentials are none of the daemon's business.
        .env_remove("KEEL_TOKEN")
        .env_remove("KEEL_USERNAME")
        .env_remove("KEEL_PASSWORD")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting nsenter")?;
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if !keeld_pids(node).is_empty() {
            tracing::info!(node = %node.name, address = %node.address, "keeld started");
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "keeld on {} exited at once ({status}); the end of {}:\n{}",
                node.name,
                log_path.display(),
                host::tail(&log_path, 20)
            );
        }
        if Instant::now() >= end {
            bail!("keeld on {} did not start within 5 s", node.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls the cluster (through any node whose CA exists) until every node in `want` is a
/// member in state ready. Returns the view and the node that answered.
async fn wait_ready(
    paths: &DevPaths,
    st: &DevState,
    want: &[String],
    timeout: Duration,
) -> anyhow::Result<(ClusterStatus, String)> {
    tracing::info!(nodes = %want.join(","), timeout_s = timeout.as_secs(), "waiting for the nodes to be ready");
    let end = Instant::now() + timeout;
    let mut clients: HashMap<String, ApiClient> = HashMap::new();
    // A node whose login failed is left alone for a while (its Retry-After, if it sent one),
    // so that polling does not trip the login rate limit.
    let mut not_before: HashMap<String, Instant> = HashMap::new();
    let mut last = String::from("no node has the cluster CA yet");
    let mut missing: Vec<String> = want.to_vec();
    loop {
        for name in want {
            let node = find_node(st, name)?;
            if keeld_pids(node).is_empty() {
                let log = paths.log(name);
                bail!(
                    "keeld on {name} exited; the end of {}:\n{}",
                    log.display(),
                    host::tail(&log, 30)
                );
            }
        }
        for node in &st.nodes {
            let ca = paths.node_ca(&node.name);
            if !ca.exists() || keeld_pids(node).is_empty() {
                continue;
            }
            if not_before
                .get(&node.name)
                .is_some_and(|t| Instant::now() < *t)
            {
                continue;
            }
            let client = match clients.get(&node.name) {
                Some(c) => c.clone(),
                None => {
                    let mut c = ApiClient::new(&node.api(), Some(&ca))?
                        .with_timeout(Duration::from_secs(3));
                    if let Err(e) = c.login(ADMIN_USER, &st.admin_password).await {
                        let pause = e.retry_after().unwrap_or(LOGIN_RETRY).max(LOGIN_RETRY);
                        not_before.insert(node.name.clone(), Instant::now() + pause);
                        last = format!("{}: logging in: {e}", node.name);
                        continue;
                    }
                    clients.insert(node.name.clone(), c.clone());
                    c
                }
            };
            match client.get::<ClusterStatus>("/api/v1/cluster").await {
                Ok(view) => {
                    missing = not_ready(&view, want);
                    if missing.is_empty() {
                        return Ok((view, node.name.clone()));
                    }
                    last = summary(&view);
                    break;
                }
                Err(e) => {
                    if e.status() == Some(reqwest::StatusCode::UNAUTHORIZED) {
                        clients.remove(&node.name);
                    }
                    last = format!("{}: {e}", node.name);
                }
            }
        }
        if Instant::now() >= end {
            for name in &missing {
                let log = paths.log(name);
                eprintln!(
                    "--- {name}: the end of {} ---\n{}",
                    log.display(),
                    host::tail(&log, 20)
                );
            }
            bail!(
                "the nodes were not all ready within {} s; not ready: {} (last seen: {last})",
                timeout.as_secs(),
                missing.join(", ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The nodes of `want` that are not members in state ready.
pub fn not_ready(view: &ClusterStatus, want: &[String]) -> Vec<String> {
    want.iter()
        .filter(|w| {
            !view
                .members
                .iter()
                .any(|m| &m.name == *w && m.state == NodeState::Ready)
        })
        .cloned()
        .collect()
}

fn summary(view: &ClusterStatus) -> String {
    let members: Vec<String> = view
        .members
        .iter()
        .map(|m| {
            format!(
                "{} {}/{}",
                m.name,
                crate::commands::wire_name(&m.role),
                crate::commands::wire_name(&m.state)
            )
        })
        .collect();
    format!(
        "leader {}, members: {}",
        view.leader.as_deref().unwrap_or("none"),
        members.join(", ")
    )
}

fn start_forwarder(paths: &DevPaths, st: &mut DevState, listen: SocketAddr) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this program's path")?;
    let log_path = paths.forward_log();
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut child = Command::new("setsid")
        .arg(exe)
        .args(["dev", "forward", "--listen", &listen.to_string(), "--state"])
        .arg(paths.root())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the forwarder")?;
    let pid = i32::try_from(child.id())?;
    st.forwarder = Some(Forwarder { listen, pid });
    save(paths, st)?;
    let target = connect_addr(listen);
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
            tracing::info!(%listen, pid, "forwarder started");
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the forwarder exited ({status}): {}",
                host::tail(&log_path, 5)
            );
        }
        if Instant::now() >= end {
            bail!("the forwarder does not accept on {listen} after 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// down

/// `keel dev down`: idempotent; a no-op when nothing is recorded.
pub fn down(state_dir: &Path) -> anyhow::Result<()> {
    let Some(paths) = existing_paths(state_dir)? else {
        eprintln!("nothing to remove: {} does not exist", state_dir.display());
        return Ok(());
    };
    let Some(mut st) = state::load(&paths)? else {
        eprintln!(
            "nothing to remove: no dev cluster is recorded in {}",
            paths.root().display()
        );
        return Ok(());
    };
    require_root()?;
    teardown(&paths, &mut st)?;
    eprintln!(
        "removed the dev cluster of {}; the logs stay in its node directories, and QEMU's probed capabilities in cache/",
        paths.root().display()
    );
    Ok(())
}

/// Removes everything recorded in `st`, updating `dev.json` as it goes; on success `dev.json`
/// is removed too. Keeps going past failures and reports them all.
fn teardown(paths: &DevPaths, st: &mut DevState) -> anyhow::Result<()> {
    let mut errors: Vec<String> = Vec::new();

    if let Some(f) = st.forwarder.clone() {
        if procs::is_alive(f.pid) && is_forwarder(f.pid, paths) {
            procs::signal_all(&[f.pid], Signal::SIGKILL);
            if !procs::wait_gone(&[f.pid], KILL_DEADLINE).is_empty() {
                errors.push(format!("the forwarder (pid {}) survived SIGKILL", f.pid));
            }
        }
        if errors.is_empty() {
            st.forwarder = None;
            save(paths, st)?;
        }
    }

    for node in &st.nodes {
        let Some(ns) = &node.netns else { continue };
        if !host::netns_exists(ns) {
            continue;
        }
        match procs::ns_id(&host::netns_path(ns)) {
            Ok(id) => {
                let left = procs::kill_netns(id, KILL_DEADLINE);
                if !left.is_empty() {
                    errors.push(format!(
                        "{}: processes {left:?} survived SIGKILL",
                        node.name
                    ));
                }
            }
            Err(e) => errors.push(format!("{}: reading {ns}: {e}", node.name)),
        }
    }
    procs::reap_children();

    let names: Vec<String> = st.nodes.iter().map(|n| n.name.clone()).collect();
    for name in &names {
        remove_node_objects(paths, st, name, &mut errors);
    }
    st.nodes
        .retain(|n| n.netns.is_some() || n.veth.is_some() || n.mount_ns.is_some());
    save(paths, st)?;

    if let Some(bridge) = st.bridge.clone() {
        if host::link_exists(&bridge) {
            if let Err(e) = run("ip", &["link", "del", &bridge]) {
                errors.push(e.to_string());
            }
        }
        if !host::link_exists(&bridge) {
            st.bridge = None;
            save(paths, st)?;
        }
    }

    if st.ns_dir_mounted && st.nodes.is_empty() {
        let ns_dir = paths.ns_dir();
        if host::is_mountpoint(&ns_dir) {
            if let Err(e) = run("umount", &[&ns_dir.to_string_lossy()]) {
                errors.push(e.to_string());
            }
        }
        if !host::is_mountpoint(&ns_dir) {
            let _ = fs::remove_dir(&ns_dir);
            st.ns_dir_mounted = false;
            save(paths, st)?;
        }
    }

    if !errors.is_empty() {
        bail!(
            "could not remove everything ({}); what is left is still recorded in {}, so `keel dev down` can try again",
            errors.join("; "),
            paths.dev_json().display()
        );
    }
    let _ = fs::remove_file(paths.ca());
    state::remove(paths)?;
    Ok(())
}

/// True when `pid` is this state directory's forwarder (guards against a reused pid).
fn is_forwarder(pid: i32, paths: &DevPaths) -> bool {
    let args = procs::cmdline(pid);
    let root = paths.root().to_string_lossy();
    args.iter().any(|a| a == "forward") && args.iter().any(|a| *a == root)
}

/// Removes a node's mount namespace file, veth, network namespace and keeld state (its log
/// stays). The node's processes must be gone already.
fn remove_node_objects(paths: &DevPaths, st: &mut DevState, name: &str, errors: &mut Vec<String>) {
    let Some(node) = st.node(name).cloned() else {
        return;
    };
    let mut node = node;
    if let Some(mnt) = node.mount_ns.clone() {
        if host::is_mountpoint(&mnt) {
            if let Err(e) = run("umount", &[&mnt.to_string_lossy()]) {
                errors.push(e.to_string());
            }
        }
        if !host::is_mountpoint(&mnt) {
            let _ = fs::remove_file(&mnt);
            node.mount_ns = None;
        }
    }
    if let Some(veth) = node.veth.clone() {
        if host::link_exists(&veth) {
            if let Err(e) = run("ip", &["link", "del", &veth]) {
                errors.push(e.to_string());
            }
        }
        if !host::link_exists(&veth) {
            node.veth = None;
        }
    }
    if let Some(ns) = node.netns.clone() {
        if host::netns_exists(&ns) {
            if let Err(e) = run("ip", &["netns", "del", &ns]) {
                errors.push(e.to_string());
            }
        }
        if !host::netns_exists(&ns) {
            node.netns = None;
        }
    }
    for path in [
        paths.node_state(name),
        paths.answer(name),
        paths.libvirt_dir(name),
    ] {
        let gone = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(e) = gone {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("removing {}: {e}", path.display()));
            }
        }
    }
    // The directory stays while it holds the log.
    let _ = fs::remove_dir(paths.node_dir(name));
    if let Some(n) = st.node_mut(name) {
        *n = node;
    }
    if let Err(e) = save(paths, st) {
        errors.push(format!("{e:#}"));
    }
}

// ---------------------------------------------------------------------------------------------
// add, stop, start, exec, status

/// `keel dev add NAME`: one more node at the next address. Returns it.
pub async fn add(
    state_dir: &Path,
    name: &str,
    join_secret: Option<&str>,
    no_libvirt: bool,
    wait: bool,
    timeout: Duration,
) -> anyhow::Result<DevInfoNode> {
    require_root()?;
    let paths = existing_paths(state_dir)?.ok_or_else(|| {
        anyhow!(
            "{} does not exist; start a cluster with `keel dev up`",
            state_dir.display()
        )
    })?;
    let mut st = load_required(&paths)?;
    if st.node(name).is_some() {
        bail!("the dev cluster already has a node {name}");
    }
    let subnet = Subnet::from_cidr(&st.subnet)?;
    let index = st.next_index();
    let ns = plan::netns_name(&st.id, name);
    if host::netns_exists(&ns) {
        bail!("the network namespace {ns} already exists but is not recorded here; remove it with `ip netns del {ns}`");
    }
    st.nodes.push(DevNode {
        name: name.to_string(),
        index,
        address: subnet.node_address(index)?,
        netns: None,
        veth: None,
        mount_ns: None,
        join_secret: join_secret.map(str::to_string),
        libvirt: libvirt::wanted(no_libvirt),
    });
    save(&paths, &st)?;
    let made = match create_node(&paths, &mut st, name) {
        Ok(()) => {
            start_libvirt(
                &paths,
                st.nodes
                    .iter()
                    .filter(|n| n.name == name)
                    .cloned()
                    .collect(),
            )
            .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = made {
        let mut errors = Vec::new();
        if let Some(id) = st.node(name).and_then(|n| node_netns(n).ok()) {
            procs::kill_netns(id, KILL_DEADLINE);
        }
        remove_node_objects(&paths, &mut st, name, &mut errors);
        if errors.is_empty() {
            st.nodes.retain(|n| n.name != name);
            save(&paths, &st)?;
            return Err(e);
        }
        return Err(e.context(format!(
            "and removing the half-made node failed: {}",
            errors.join("; ")
        )));
    }
    if wait {
        wait_ready(&paths, &st, &[name.to_string()], timeout).await?;
    }
    find_node(&st, name).map(DevInfoNode::from)
}

/// `keel dev stop NODE [--kill]`.
pub fn stop(state_dir: &Path, name: &str, kill: bool) -> anyhow::Result<()> {
    require_root()?;
    let paths = existing_paths(state_dir)?
        .ok_or_else(|| anyhow!("{} does not exist", state_dir.display()))?;
    let st = load_required(&paths)?;
    let node = find_node(&st, name)?;
    let ns = node_netns(node)?;
    if kill {
        let pids = procs::pids_in_netns(ns);
        let left = procs::kill_netns(ns, KILL_DEADLINE);
        if !left.is_empty() {
            bail!("processes {left:?} of {name} survived SIGKILL");
        }
        eprintln!("killed {name}: {} processes", pids.len());
        return Ok(());
    }
    let keelds = procs::keelds(&procs::pids_in_netns(ns));
    if keelds.is_empty() {
        eprintln!("keeld on {name} is not running");
        return Ok(());
    }
    procs::signal_all(&keelds, Signal::SIGTERM);
    let left = procs::wait_gone(&keelds, STOP_DEADLINE);
    if !left.is_empty() {
        procs::signal_all(&left, Signal::SIGKILL);
        let still = procs::wait_gone(&left, KILL_DEADLINE);
        if !still.is_empty() {
            bail!("keeld on {name} ({still:?}) survived SIGTERM and SIGKILL");
        }
        tracing::warn!(
            node = name,
            "keeld did not stop within {} s of SIGTERM; killed it",
            STOP_DEADLINE.as_secs()
        );
    }
    eprintln!("stopped keeld on {name}");
    Ok(())
}

/// `keel dev start NODE`.
pub fn start(state_dir: &Path, name: &str) -> anyhow::Result<()> {
    require_root()?;
    let paths = existing_paths(state_dir)?
        .ok_or_else(|| anyhow!("{} does not exist", state_dir.display()))?;
    let st = load_required(&paths)?;
    let node = find_node(&st, name)?;
    let running = keeld_pids(node);
    if !running.is_empty() {
        bail!("keeld on {name} is already running (pid {running:?})");
    }
    // After `stop --kill` the hypervisor is down too; it answers before keeld starts.
    if node.libvirt {
        libvirt::start(&paths, std::slice::from_ref(node), LIBVIRT_DEADLINE)?;
        if ovs::installed() {
            ovs::start_node(&paths, node, LIBVIRT_DEADLINE)?;
        }
    }
    start_keeld(&paths, &st, node)
}

/// `keel dev exec NODE -- CMD…`: replaces this process with CMD inside the node's network and
/// mount namespaces, so its exit status and signals are CMD's own. Returns only on failure.
pub fn exec(state_dir: &Path, name: &str, command: &[String]) -> anyhow::Result<()> {
    require_root()?;
    let paths = existing_paths(state_dir)?
        .ok_or_else(|| anyhow!("{} does not exist", state_dir.display()))?;
    let st = load_required(&paths)?;
    let node = find_node(&st, name)?;
    let ns = node
        .netns
        .as_deref()
        .ok_or_else(|| anyhow!("{name} has no network namespace"))?;
    let mnt = node
        .mount_ns
        .as_deref()
        .ok_or_else(|| anyhow!("{name} has no mount namespace"))?;
    let err = Command::new("nsenter")
        .arg(format!("--net={}", host::netns_path(ns).display()))
        .arg(format!("--mount={}", mnt.display()))
        .arg("--")
        .args(command)
        .exec();
    Err(err).context("running nsenter")
}

/// A command that runs `program` inside node `name`'s network and mount namespaces (for tools
/// such as `virsh` that must talk to the node's own daemons).
pub fn node_command(state_dir: &Path, name: &str, program: &str) -> anyhow::Result<Command> {
    let paths = existing_paths(state_dir)?
        .ok_or_else(|| anyhow!("{} does not exist", state_dir.display()))?;
    let st = load_required(&paths)?;
    let node = find_node(&st, name)?;
    let ns = node
        .netns
        .as_deref()
        .ok_or_else(|| anyhow!("{name} has no network namespace"))?;
    let mnt = node
        .mount_ns
        .as_deref()
        .ok_or_else(|| anyhow!("{name} has no mount namespace"))?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", host::netns_path(ns).display()))
        .arg(format!("--mount={}", mnt.display()))
        .arg("--")
        .arg(program);
    Ok(cmd)
}

/// What `keel dev status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct DevStatus {
    /// State directory.
    pub state: PathBuf,
    /// Id in host object names.
    pub id: String,
    /// Bridge subnet.
    pub subnet: String,
    /// Host bridge.
    pub bridge: Option<String>,
    /// Forwarded endpoint.
    pub endpoint: Option<String>,
    /// Forwarder process.
    pub forwarder: Option<ProcessStatus>,
    /// Cluster CA.
    pub ca_cert: Option<PathBuf>,
    /// Nodes.
    pub nodes: Vec<NodeStatus>,
}

/// A process and whether it runs.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessStatus {
    /// Pid.
    pub pid: i32,
    /// Alive and not a zombie.
    pub running: bool,
}

/// One node in [`DevStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Name.
    pub name: String,
    /// Address.
    pub address: String,
    /// API URL.
    pub api: String,
    /// Network namespace.
    pub netns: Option<String>,
    /// Host veth.
    pub veth: Option<String>,
    /// Mount namespace file.
    pub mount_ns: Option<PathBuf>,
    /// keeld's pid, when it runs.
    pub keeld_pid: Option<i32>,
    /// keeld's resident memory.
    pub keeld_rss_bytes: Option<u64>,
    /// The node has its own libvirt.
    pub libvirt: bool,
    /// libvirtd's pid, when it runs.
    pub libvirtd_pid: Option<i32>,
    /// Every process in the node's network namespace.
    pub pids: Vec<i32>,
}

/// `keel dev status`.
pub fn status(state_dir: &Path) -> anyhow::Result<DevStatus> {
    let paths = existing_paths(state_dir)?
        .ok_or_else(|| anyhow!("{} does not exist", state_dir.display()))?;
    let st = load_required(&paths)?;
    Ok(status_of(&paths, &st))
}

/// The status of a recorded dev cluster.
pub fn status_of(paths: &DevPaths, st: &DevState) -> DevStatus {
    let nodes = st
        .nodes
        .iter()
        .map(|n| {
            let pids = node_netns(n).map(procs::pids_in_netns).unwrap_or_default();
            let keeld_pid = procs::keelds(&pids).first().copied();
            NodeStatus {
                name: n.name.clone(),
                address: n.address.to_string(),
                api: n.api(),
                netns: n.netns.clone(),
                veth: n.veth.clone(),
                mount_ns: n.mount_ns.clone(),
                keeld_pid,
                keeld_rss_bytes: keeld_pid.and_then(procs::rss_bytes),
                libvirt: n.libvirt,
                libvirtd_pid: procs::named(&pids, "libvirtd").first().copied(),
                pids,
            }
        })
        .collect();
    DevStatus {
        state: paths.root().to_path_buf(),
        id: st.id.clone(),
        subnet: st.subnet.to_string(),
        bridge: st.bridge.clone(),
        endpoint: st
            .forwarder
            .as_ref()
            .map(|f| format!("https://{}", connect_addr(f.listen))),
        forwarder: st.forwarder.as_ref().map(|f| ProcessStatus {
            pid: f.pid,
            running: procs::is_alive(f.pid) && is_forwarder(f.pid, paths),
        }),
        ca_cert: paths.ca().exists().then(|| paths.ca()),
        nodes,
    }
}

/// What a client of the recorded cluster needs (for `keel bench cluster`).
pub fn info_of(paths: &DevPaths, st: &DevState) -> DevInfo {
    let forward = st
        .forwarder
        .as_ref()
        .map(|f| f.listen)
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, plan::API_PORT)));
    info(paths, st, forward)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::{Member, MemberRole};

    fn member(name: &str, state: NodeState) -> Member {
        Member {
            name: name.into(),
            id: 1,
            address: String::new(),
            role: MemberRole::Voter,
            state,
        }
    }

    #[test]
    fn readiness_needs_membership_and_ready_state() {
        let view = ClusterStatus {
            name: "dev".into(),
            leader: Some("node1".into()),
            term: 1,
            committed: 1,
            members: vec![
                member("node1", NodeState::Ready),
                member("node2", NodeState::Joining),
            ],
        };
        let want: Vec<String> = ["node1", "node2", "node3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(not_ready(&view, &want), ["node2", "node3"]);
        assert!(not_ready(&view, &want[..1]).is_empty());
        assert_eq!(
            summary(&view),
            "leader node1, members: node1 voter/ready, node2 voter/joining"
        );
    }

    #[test]
    fn unspecified_forward_addresses_connect_on_loopback() {
        assert_eq!(
            connect_addr("0.0.0.0:8443".parse().unwrap()),
            "127.0.0.1:8443".parse().unwrap()
        );
        assert_eq!(
            connect_addr("127.0.0.2:1".parse().unwrap()),
            "127.0.0.2:1".parse().unwrap()
        );
    }

    #[test]
    fn dev_info_prints_the_documented_shape() {
        let info = DevInfo {
            endpoint: "https://127.0.0.1:8443".into(),
            nodes: vec![DevInfoNode {
                name: "node1".into(),
                address: "10.77.0.11".into(),
                api: "https://10.77.0.11:8443".into(),
            }],
            username: "admin".into(),
            password: "pw".into(),
            ca_cert: "/var/lib/keel-dev/ca.pem".into(),
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"endpoint":"https://127.0.0.1:8443","nodes":[{"name":"node1","address":"10.77.0.11","api":"https://10.77.0.11:8443"}],"username":"admin","password":"pw","ca_cert":"/var/lib/keel-dev/ca.pem"}"#
        );
    }

    #[test]
    fn a_missing_keeld_is_explained() {
        let err = find_keeld(Some(Path::new("/nonexistent/keeld")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo build -p keel-keeld"), "{err}");
    }
}
