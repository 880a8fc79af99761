//! Each dev-cluster node's own hypervisor: `virtlogd` and `libvirtd` running in the node's
//! network and mount namespaces, over libvirt directories of the node's own, so that the
//! guests of different nodes are on different hypervisors and live migration really moves
//! them from one to another.
//!
//! ```text
//!  <state>/nodeN/libvirt/etc    ─bind─▶ /etc/libvirt       (the host's configuration files
//!                       /lib    ─bind─▶ /var/lib/libvirt    and filters, not its domains,
//!                       /log    ─bind─▶ /var/log/libvirt    networks, pools, secrets or
//!                       /cache  ─bind─▶ /var/cache/libvirt  hooks; our libvirtd/qemu.conf)
//!  /run/libvirt: the node's /run tmpfs    /sys/fs/cgroup: the host's, bound in by `ops`
//!
//!  virtlogd ◀── libvirtd --listen ──▶ QEMU guests (in the node's network namespace)
//!                 ├─ qemu:///system                   from inside the node (keeld, virsh)
//!                 └─ qemu+tcp://<node address>/system from the other nodes (migration)
//! ```
//!
//! Why `libvirtd` and not `virtqemud`: Debian 12's packages install the monolithic daemon
//! only, and it has the TCP listener that migration between nodes needs built in (the modular
//! daemons would need `virtproxyd` as well).
//!
//! Probing QEMU's capabilities takes seconds the first time a daemon meets a QEMU binary. The
//! result is cached per state directory ([`DevPaths::qemu_capabilities_cache`]) and copied
//! into each node before its daemon starts; with no cache yet, one node probes alone and the
//! others start from its result ([`start`]).

use std::fs;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngCore as _;

use super::host;
use super::plan::Subnet;
use super::procs;
use super::state::{DevNode, DevPaths};

/// The libvirt daemon.
pub const LIBVIRTD: &str = "/usr/sbin/libvirtd";

/// The daemon that keeps the guests' console logs.
pub const VIRTLOGD: &str = "/usr/sbin/virtlogd";

/// The URI of a node's own libvirt, from inside the node.
pub const LOCAL_URI: &str = "qemu:///system";

/// libvirtd's TCP port, on the node's address only.
pub const TCP_PORT: u16 = 16509;

/// Ports QEMU takes for incoming migration streams (and NBD disk copies), libvirt's default.
pub const MIGRATION_PORTS: (u16, u16) = (49152, 49215);

/// The nftables table each node's firewall rules live in.
pub const FIREWALL_TABLE: &str = "keel_dev_libvirt";

/// How often readiness is checked.
const POLL: Duration = Duration::from_millis(100);

/// A node's directory (under [`DevPaths::libvirt_dir`]) and where it is bound in the node.
pub const BINDS: [(&str, &str); 4] = [
    ("etc", "/etc/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
];

/// Directories of the host's `/etc/libvirt` copied into a node's, besides its plain files.
/// The others hold the host's own objects (`qemu/` domains and networks, with the default
/// network's autostart link; `storage/`, `secrets/`) or run host scripts (`hooks/`).
const SEEDED_DIRS: [&str; 1] = ["nwfilter"];

/// The host's libvirt configuration.
const HOST_ETC: &str = "/etc/libvirt";

/// The host's own libvirt's QEMU capabilities cache, read (never written) when the dev
/// cluster has none yet: a host whose libvirtd ever ran spares the nodes the probe.
const HOST_CAPABILITIES: &str = "/var/cache/libvirt/qemu/capabilities";

/// Why a node's libvirt could not be made or started.
#[derive(Debug, thiserror::Error)]
pub enum NodeLibvirtError {
    /// A file operation failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The node has no namespaces recorded.
    #[error("{node} has no {what} namespace (was `up` interrupted?)")]
    NoNamespace {
        /// The node.
        node: String,
        /// `network` or `mount`.
        what: &'static str,
    },
    /// A daemon could not be started.
    #[error("starting {program} on {node}")]
    Spawn {
        /// The node.
        node: String,
        /// The daemon.
        program: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// libvirtd is not running on the node (it exited, or never started).
    #[error("libvirtd on {node} exited; the end of {}:\n{tail}", log.display())]
    Exited {
        /// The node.
        node: String,
        /// Its log.
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
    /// libvirtd runs but does not answer.
    #[error("libvirtd on {node} did not answer `virsh version` within {seconds} s ({last}); the end of {}:\n{tail}", log.display())]
    NotReady {
        /// The node.
        node: String,
        /// The deadline.
        seconds: u64,
        /// The last failure.
        last: String,
        /// Its log.
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NodeLibvirtError {
    let path = path.to_path_buf();
    move |source| NodeLibvirtError::Io {
        action,
        path,
        source,
    }
}

/// True when this host has the libvirt daemons and `virsh`.
pub fn installed() -> bool {
    [Path::new(LIBVIRTD), Path::new(VIRTLOGD)]
        .iter()
        .all(|p| is_executable(p))
        && in_path("virsh")
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| is_executable(&d.join(program))))
}

/// Whether new nodes get their own libvirt: unless `--no-libvirt`, whenever it is installed;
/// when it is not, says so.
pub fn wanted(no_libvirt: bool) -> bool {
    if no_libvirt {
        return false;
    }
    if installed() {
        return true;
    }
    tracing::warn!(
        "libvirt is not installed ({LIBVIRTD}, {VIRTLOGD}, virsh), so the nodes get no hypervisor \
         and cannot run VMs; install libvirt-daemon-system and qemu-system-x86 \
         (system/virt/APT_PACKAGES), or pass --no-libvirt to say this is intended"
    );
    false
}

/// A random version-4 UUID, the form libvirtd.conf's `host_uuid` takes.
pub fn random_host_uuid() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The URI another node uses to reach `address`'s libvirt (peer-to-peer migration).
pub fn peer_uri(address: Ipv4Addr) -> String {
    format!("qemu+tcp://{address}/system")
}

/// A node's `libvirtd.conf`.
pub fn libvirtd_conf(node: &str, address: Ipv4Addr, host_uuid: &str) -> String {
    format!(
        r#"# Written by `keel dev` for {node}: its own libvirtd, in its own network and mount
# namespaces. /etc/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt are
# bind mounts of <state>/{node}/libvirt/{{etc,lib,log,cache}}; /run/libvirt is on the node's
# private /run. keeld and `keel dev exec {node} -- virsh` use {LOCAL_URI}.
#
# Migration between nodes is peer to peer: the source node's libvirtd connects to
# {peer} (this file, on every node). Plain TCP without authentication is the simplest
# transport that works between the dev cluster's namespaces: qemu+ssh would need an sshd and
# keys per node, TLS a certificate per node. It listens on the node's address only, and the
# node's nftables table {FIREWALL_TABLE} drops connections to it (and to QEMU's migration
# ports) from anything but the other nodes, so the host's users cannot use it. Never expose
# a libvirtd like this on a real network.
listen_tls = 0
listen_tcp = 1
listen_addr = "{address}"
tcp_port = "{TCP_PORT}"
auth_tcp = "none"

# libvirt refuses to migrate a guest to "the same host", which it decides by this UUID; the
# nodes share the machine's, so each node has its own.
host_uuid = "{host_uuid}"

# Everything to stderr, which `keel dev` sends to <state>/{node}/libvirtd.log.
log_outputs = "3:stderr"
"#,
        peer = peer_uri(address),
    )
}

/// A node's `qemu.conf`.
pub fn qemu_conf(node: &str, address: Ipv4Addr) -> String {
    let (min, max) = MIGRATION_PORTS;
    format!(
        r#"# Written by `keel dev` for {node}'s own libvirtd (see libvirtd.conf).

# QEMU runs as root and libvirt leaves file ownership and labels alone: guest disks live in
# the dev cluster's state directory, and a dev cluster is no security boundary.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"

# No cgroups for guests. libvirt (without systemd-machined, which a node cannot reach)
# creates them under /machine at the root of the host's hierarchy, not under its own
# cgroup: every node's guests would share it, and a guest's cgroup is named after its name
# and id, which the source and destination of a migration can have in common.
cgroup_controllers = [ ]

# Incoming migrations listen on the node's address, and the migration URI names that
# address: the host name is the machine's, the same on every node.
migration_address = "{address}"
migration_host = "{address}"
migration_port_min = {min}
migration_port_max = {max}
"#
    )
}

/// The node's firewall (nftables, in the node's network namespace): libvirtd's port and the
/// migration ports accept only the subnet's node addresses, not the host's gateway address
/// and not the host's other addresses.
pub fn firewall(subnet: &Subnet) -> Result<String, super::plan::PlanError> {
    let gateway = subnet.gateway()?;
    let cidr = subnet.cidr();
    let (min, max) = MIGRATION_PORTS;
    Ok(format!(
        "table inet {FIREWALL_TABLE}\n\
         delete table inet {FIREWALL_TABLE}\n\
         table inet {FIREWALL_TABLE} {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority 0; policy accept;\n\
         \t\ttcp dport {{ {TCP_PORT}, {min}-{max} }} ip saddr != {cidr} drop\n\
         \t\ttcp dport {{ {TCP_PORT}, {min}-{max} }} ip saddr {gateway} drop\n\
         \t}}\n\
         }}\n"
    ))
}

/// Makes a node's libvirt directories afresh: the host's configuration files and network
/// filters, and this node's `libvirtd.conf` (with a new host UUID), `qemu.conf` and firewall.
pub fn prepare(paths: &DevPaths, node: &DevNode, subnet: &Subnet) -> Result<(), NodeLibvirtError> {
    let dir = paths.libvirt_dir(&node.name);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing the old", &dir)(e)),
    }
    for (sub, _) in BINDS {
        let d = dir.join(sub);
        fs::create_dir_all(&d).map_err(io("creating", &d))?;
    }
    let etc = dir.join("etc");
    seed_etc(Path::new(HOST_ETC), &etc)?;
    write(
        &etc.join("libvirtd.conf"),
        &libvirtd_conf(&node.name, node.address, &random_host_uuid()),
    )?;
    write(&etc.join("qemu.conf"), &qemu_conf(&node.name, node.address))?;
    let rules = firewall(subnet).map_err(|e| NodeLibvirtError::Io {
        action: "writing the firewall of",
        path: dir.clone(),
        source: std::io::Error::other(e),
    })?;
    write(&firewall_file(paths, &node.name), &rules)?;
    Ok(())
}

/// Where a node's firewall rules are written.
pub fn firewall_file(paths: &DevPaths, node: &str) -> PathBuf {
    paths.libvirt_dir(node).join("firewall.nft")
}

/// The bind mounts of a node: (its directory, the path in the node).
pub fn binds(paths: &DevPaths, node: &str) -> Vec<(PathBuf, &'static str)> {
    let dir = paths.libvirt_dir(node);
    BINDS
        .iter()
        .map(|(sub, target)| (dir.join(sub), *target))
        .collect()
}

fn write(path: &Path, body: &str) -> Result<(), NodeLibvirtError> {
    fs::write(path, body).map_err(io("writing", path))
}

/// Copies the plain files of `from` and its [`SEEDED_DIRS`] into `to`. A host without
/// `/etc/libvirt` seeds nothing.
fn seed_etc(from: &Path, to: &Path) -> Result<(), NodeLibvirtError> {
    let entries = match fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("reading", from)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("reading", from))?;
        let src = entry.path();
        let ty = entry.file_type().map_err(io("reading", &src))?;
        let name = entry.file_name();
        let keep_dir = SEEDED_DIRS.iter().any(|d| name == *d);
        if ty.is_file() {
            copy_file(&src, &to.join(&name))?;
        } else if ty.is_dir() && keep_dir {
            copy_tree(&src, &to.join(&name))?;
        }
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> Result<(), NodeLibvirtError> {
    fs::copy(from, to).map_err(io("copying", from))?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), NodeLibvirtError> {
    fs::create_dir_all(to).map_err(io("creating", to))?;
    for entry in fs::read_dir(from).map_err(io("reading", from))? {
        let entry = entry.map_err(io("reading", from))?;
        let src = entry.path();
        let ty = entry.file_type().map_err(io("reading", &src))?;
        if ty.is_dir() {
            copy_tree(&src, &to.join(entry.file_name()))?;
        } else if ty.is_file() {
            copy_file(&src, &to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Where libvirt keeps the QEMU capabilities it probed, in a node's cache directory.
fn node_capabilities(paths: &DevPaths, node: &str) -> PathBuf {
    paths
        .libvirt_dir(node)
        .join("cache")
        .join("qemu")
        .join("capabilities")
}

/// The XML files in `dir` (none when it does not exist).
fn xml_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "xml") && p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// Copies every XML file of `from` into `to`, each through a temporary name so that a reader
/// never sees half a file.
fn copy_xml(from: &Path, to: &Path) -> Result<usize, NodeLibvirtError> {
    let files = xml_files(from);
    if files.is_empty() {
        return Ok(0);
    }
    fs::create_dir_all(to).map_err(io("creating", to))?;
    for src in &files {
        let Some(name) = src.file_name() else {
            continue;
        };
        let dst = to.join(name);
        let tmp = to.join(format!(".{}.tmp", name.to_string_lossy()));
        fs::copy(src, &tmp).map_err(io("copying", src))?;
        fs::rename(&tmp, &dst).map_err(io("writing", &dst))?;
    }
    Ok(files.len())
}

/// The pids of the running processes called `name` in the node's network namespace.
fn running(node: &DevNode, name: &str) -> Vec<i32> {
    let Some(ns) = node.netns.as_deref() else {
        return Vec::new();
    };
    procs::ns_id(&host::netns_path(ns))
        .map(|id| procs::named(&procs::pids_in_netns(id), name))
        .unwrap_or_default()
}

/// The pid of the node's libvirtd, when it runs.
pub fn libvirtd_pid(node: &DevNode) -> Option<i32> {
    running(node, "libvirtd").first().copied()
}

/// `nsenter` arguments entering the node's network and mount namespaces.
fn enter_args(node: &DevNode) -> Result<[String; 2], NodeLibvirtError> {
    let ns = node
        .netns
        .as_deref()
        .ok_or_else(|| NodeLibvirtError::NoNamespace {
            node: node.name.clone(),
            what: "network",
        })?;
    let mnt = node
        .mount_ns
        .as_deref()
        .ok_or_else(|| NodeLibvirtError::NoNamespace {
            node: node.name.clone(),
            what: "mount",
        })?;
    Ok([
        format!("--net={}", host::netns_path(ns).display()),
        format!("--mount={}", mnt.display()),
    ])
}

/// Starts `program args` detached (own session, stdio to `log`) in the node's namespaces.
fn spawn_daemon(
    node: &DevNode,
    program: &'static str,
    args: &[&str],
    log_path: &Path,
) -> Result<(), NodeLibvirtError> {
    let enter = enter_args(node)?;
    let mut log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(io("opening", log_path))?;
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    writeln!(
        log,
        "--- keel dev: starting {program} on {} at {now} ---",
        node.name
    )
    .map_err(io("writing", log_path))?;
    let err_log = log.try_clone().map_err(io("opening", log_path))?;
    let spawn_err = |source| NodeLibvirtError::Spawn {
        node: node.name.clone(),
        program,
        source,
    };
    // The child is not waited for: like keeld, the daemon is found again by its network
    // namespace, whoever runs `keel dev` next.
    Command::new("nsenter")
        .args(&enter)
        .arg("--")
        .arg("setsid")
        .arg(program)
        .args(args)
        .env_remove("KEEL_TOKEN")
        .env_remove("KEEL_USERNAME")
        .env_remove("KEEL_PASSWORD")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .spawn()
        .map_err(spawn_err)?;
    Ok(())
}

/// Starts whichever of the node's virtlogd and libvirtd is not running, after copying the
/// shared QEMU capabilities cache in.
pub fn spawn(paths: &DevPaths, node: &DevNode) -> Result<(), NodeLibvirtError> {
    if running(node, "virtlogd").is_empty() {
        spawn_daemon(node, VIRTLOGD, &[], &paths.virtlogd_log(&node.name))?;
    }
    if running(node, "libvirtd").is_empty() {
        copy_xml(
            &paths.qemu_capabilities_cache(),
            &node_capabilities(paths, &node.name),
        )?;
        spawn_daemon(
            node,
            LIBVIRTD,
            &["--listen"],
            &paths.libvirtd_log(&node.name),
        )?;
    }
    Ok(())
}

/// Waits until `virsh -c qemu:///system version` answers inside the node, or `deadline`.
pub fn wait_ready(
    paths: &DevPaths,
    node: &DevNode,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), NodeLibvirtError> {
    let enter = enter_args(node)?;
    let log = paths.libvirtd_log(&node.name);
    // libvirtd may take a moment to appear in the namespace after `spawn`.
    let grace = Instant::now() + Duration::from_secs(2);
    loop {
        if libvirtd_pid(node).is_none() && Instant::now() >= grace {
            return Err(NodeLibvirtError::Exited {
                node: node.name.clone(),
                tail: host::tail(&log, 20),
                log,
            });
        }
        let mut cmd = Command::new("nsenter");
        cmd.args(&enter)
            .args(["--", "virsh", "-c", LOCAL_URI, "version"]);
        let last = match bounded(cmd, deadline) {
            Ok(Some((true, _))) => return Ok(()),
            Ok(Some((false, stderr))) => stderr,
            Ok(None) => "no answer".to_string(),
            Err(e) => format!("running virsh: {e}"),
        };
        if Instant::now() >= deadline {
            return Err(NodeLibvirtError::NotReady {
                node: node.name.clone(),
                seconds: timeout.as_secs(),
                last,
                tail: host::tail(&log, 20),
                log,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Runs `cmd` until it exits or `deadline` passes (then kills it): `Some((success, stderr))`,
/// or `None` at the deadline.
fn bounded(mut cmd: Command, deadline: Instant) -> std::io::Result<Option<(bool, String)>> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    loop {
        if let Some(status) = child.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            let line = stderr.lines().next().unwrap_or_default().trim().to_string();
            return Ok(Some((status.success(), line)));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts the libvirt daemons of `nodes` (those not running) and waits until each answers;
/// returns how long that took. With no cached QEMU capabilities, the first node probes QEMU
/// alone and the others start from its result: probing on every node at once takes as long
/// on each, and the cores are shared.
pub fn start(
    paths: &DevPaths,
    nodes: &[DevNode],
    timeout: Duration,
) -> Result<Duration, NodeLibvirtError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let cache = paths.qemu_capabilities_cache();
    if xml_files(&cache).is_empty() {
        let n = copy_xml(Path::new(HOST_CAPABILITIES), &cache)?;
        tracing::debug!(
            files = n,
            "QEMU capabilities copied from the host's libvirt cache"
        );
    }
    let mut rest = nodes;
    if xml_files(&cache).is_empty() {
        if let Some((first, others)) = nodes.split_first() {
            tracing::info!(node = %first.name, "probing QEMU's capabilities (the first time only)");
            spawn(paths, first)?;
            wait_ready(paths, first, deadline, timeout)?;
            copy_xml(&node_capabilities(paths, &first.name), &cache)?;
            rest = others;
        }
    }
    for node in rest {
        spawn(paths, node)?;
    }
    for node in rest {
        wait_ready(paths, node, deadline, timeout)?;
    }
    // Whatever libvirt found stale in the cache it probed again: keep its latest view.
    if let Some(first) = nodes.first() {
        match copy_xml(&node_capabilities(paths, &first.name), &cache) {
            Ok(n) => {
                tracing::debug!(files = n, cache = %cache.display(), "QEMU capabilities cached")
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not cache QEMU's capabilities; the next `up` probes again")
            }
        }
    }
    let took = started.elapsed();
    if !nodes.is_empty() {
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        tracing::info!(nodes = %names.join(","), seconds = format!("{:.1}", took.as_secs_f64()), "libvirt answers");
    }
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet() -> Subnet {
        Subnet::from_cidr(&"10.77.4.0/24".parse().unwrap()).unwrap()
    }

    #[test]
    fn host_uuids_are_random_version_4() {
        let a = random_host_uuid();
        let b = random_host_uuid();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{a}");
        assert!(
            matches!(parts[3].chars().next(), Some('8' | '9' | 'a' | 'b')),
            "{a}"
        );
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }

    #[test]
    fn libvirtd_listens_on_the_node_address_only_without_tls() {
        let conf = libvirtd_conf(
            "node2",
            "10.77.4.12".parse().unwrap(),
            "6f1c1a52-3c57-4c55-9d2c-6d7b1e0f3a01",
        );
        let settings: Vec<&str> = conf
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        assert_eq!(
            settings,
            [
                "listen_tls = 0",
                "listen_tcp = 1",
                "listen_addr = \"10.77.4.12\"",
                "tcp_port = \"16509\"",
                "auth_tcp = \"none\"",
                "host_uuid = \"6f1c1a52-3c57-4c55-9d2c-6d7b1e0f3a01\"",
                "log_outputs = \"3:stderr\"",
            ]
        );
        assert!(conf.contains("qemu+tcp://10.77.4.12/system"), "{conf}");
    }

    #[test]
    fn qemu_migrates_on_the_node_address_without_cgroups() {
        let conf = qemu_conf("node1", "10.77.4.11".parse().unwrap());
        for want in [
            "migration_address = \"10.77.4.11\"",
            "migration_host = \"10.77.4.11\"",
            "migration_port_min = 49152",
            "migration_port_max = 49215",
            "cgroup_controllers = [ ]",
            "user = \"root\"",
            "security_driver = \"none\"",
        ] {
            assert!(
                conf.lines().any(|l| l == want),
                "{want} missing from:\n{conf}"
            );
        }
    }

    #[test]
    fn the_firewall_admits_only_node_addresses() {
        let rules = firewall(&subnet()).unwrap();
        assert!(rules.contains("ip saddr != 10.77.4.0/24 drop"), "{rules}");
        assert!(rules.contains("ip saddr 10.77.4.1 drop"), "{rules}");
        assert!(
            rules.contains("tcp dport { 16509, 49152-49215 }"),
            "{rules}"
        );
        // Applying it twice replaces the table instead of adding a second copy of the rules.
        assert!(
            rules.starts_with("table inet keel_dev_libvirt\ndelete table inet keel_dev_libvirt\n")
        );
    }

    #[test]
    fn the_seed_leaves_out_the_hosts_objects_and_hooks() {
        let host = tempfile::tempdir().unwrap();
        let h = host.path();
        fs::write(h.join("libvirt.conf"), "uri_default = \"qemu:///system\"\n").unwrap();
        fs::create_dir_all(h.join("nwfilter")).unwrap();
        fs::write(h.join("nwfilter/allow-arp.xml"), "<filter/>").unwrap();
        fs::create_dir_all(h.join("qemu/networks/autostart")).unwrap();
        fs::write(h.join("qemu/networks/default.xml"), "<network/>").unwrap();
        fs::write(h.join("qemu/hostvm.xml"), "<domain/>").unwrap();
        fs::create_dir_all(h.join("hooks")).unwrap();
        fs::write(h.join("hooks/qemu"), "#!/bin/sh\n").unwrap();
        fs::create_dir_all(h.join("storage")).unwrap();
        let node = tempfile::tempdir().unwrap();
        seed_etc(h, node.path()).unwrap();
        let mut found: Vec<String> = Vec::new();
        let mut stack = vec![node.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                }
                found.push(
                    e.path()
                        .strip_prefix(node.path())
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        found.sort();
        assert_eq!(
            found,
            ["libvirt.conf", "nwfilter", "nwfilter/allow-arp.xml"]
        );
        // No /etc/libvirt at all seeds nothing.
        seed_etc(&h.join("missing"), node.path()).unwrap();
    }

    #[test]
    fn capabilities_are_copied_whole() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        assert_eq!(copy_xml(from.path(), &to.path().join("c")).unwrap(), 0);
        assert!(!to.path().join("c").exists());
        fs::write(from.path().join("a.xml"), "<qemuCaps/>").unwrap();
        fs::write(from.path().join("notes.txt"), "x").unwrap();
        assert_eq!(copy_xml(from.path(), &to.path().join("c")).unwrap(), 1);
        assert_eq!(xml_files(&to.path().join("c")).len(), 1);
        assert_eq!(
            fs::read_to_string(to.path().join("c/a.xml")).unwrap(),
            "<qemuCaps/>"
        );
    }

    #[test]
    fn peer_uris_name_the_node_address() {
        assert_eq!(
            peer_uri("10.77.4.12".parse().unwrap()),
            "qemu+tcp://10.77.4.12/system"
        );
    }
}
