//! `<state>/dev.json`: every host object `keel dev up` made, written down as soon as it exists,
//! so that `keel dev down` removes exactly that, even after a crash halfway through `up`.
//!
//! Data only (H16): versioned, no handles. The processes are not listed: they are found by
//! their network namespace (see `procs`), which a crashed or restarted keeld cannot escape.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use keel_model::Cidr;
use serde::{Deserialize, Serialize};

use super::plan::API_PORT;

/// Format version of `dev.json`.
pub const DEV_STATE_VERSION: u32 = 1;

/// A dev cluster as recorded.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevState {
    /// Format version.
    pub version: u32,
    /// Short id in host object names.
    pub id: String,
    /// The bridge subnet.
    pub subnet: Cidr,
    /// Nodes the cluster was formed with.
    pub expected_nodes: u32,
    /// The cluster's join secret.
    pub join_secret: String,
    /// The admin password.
    pub admin_password: String,
    /// The keeld binary.
    pub keeld: PathBuf,
    /// `<state>/ns` is bind-mounted onto itself (private) to hold the mount namespace files.
    pub ns_dir_mounted: bool,
    /// The host bridge, once created.
    pub bridge: Option<String>,
    /// The TCP forwarder, once started.
    pub forwarder: Option<Forwarder>,
    /// The nodes, in creation order.
    pub nodes: Vec<DevNode>,
}

impl std::fmt::Debug for DevState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevState")
            .field("id", &self.id)
            .field("subnet", &self.subnet)
            .field("bridge", &self.bridge)
            .field("forwarder", &self.forwarder)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

/// The forwarder process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forwarder {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Its pid.
    pub pid: i32,
}

/// One node and the host objects made for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevNode {
    /// Node name.
    pub name: String,
    /// Index: the address is .(10+index) and the veth is `kv<id>n<index>`.
    pub index: u32,
    /// Management address.
    pub address: Ipv4Addr,
    /// Network namespace, once created.
    pub netns: Option<String>,
    /// Host side of the veth pair, once created.
    pub veth: Option<String>,
    /// Mount namespace file, once bound.
    pub mount_ns: Option<PathBuf>,
    /// A join secret that differs from the cluster's (`dev add --join-secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_secret: Option<String>,
    /// The node runs its own libvirt daemons (absent in records made before they did).
    #[serde(default)]
    pub libvirt: bool,
}

impl DevNode {
    /// The node's API URL.
    pub fn api(&self) -> String {
        format!("https://{}:{API_PORT}", self.address)
    }
}

impl DevState {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&DevNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The node called `name`, mutably.
    pub fn node_mut(&mut self, name: &str) -> Option<&mut DevNode> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }

    /// The index the next added node gets.
    pub fn next_index(&self) -> u32 {
        self.nodes.iter().map(|n| n.index).max().unwrap_or(0) + 1
    }
}

/// Where things live under the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPaths {
    root: PathBuf,
}

impl DevPaths {
    /// Paths under `root` (absolute, canonical).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `dev.json`.
    pub fn dev_json(&self) -> PathBuf {
        self.root.join("dev.json")
    }

    /// Directory of the mount namespace files.
    pub fn ns_dir(&self) -> PathBuf {
        self.root.join("ns")
    }

    /// A node's mount namespace file.
    pub fn mount_ns(&self, node: &str) -> PathBuf {
        self.ns_dir().join(format!("{node}.mnt"))
    }

    /// A node's directory.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join(node)
    }

    /// keeld's state directory of a node.
    pub fn node_state(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("state")
    }

    /// A node's answer file.
    pub fn answer(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("answer.toml")
    }

    /// A node's keeld log.
    pub fn log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("keeld.log")
    }

    /// A node's libvirt directories (bound over `/etc/libvirt`, `/var/lib/libvirt`, …).
    pub fn libvirt_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("libvirt")
    }

    /// A node's libvirtd log.
    pub fn libvirtd_log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("libvirtd.log")
    }

    /// A node's virtlogd log.
    pub fn virtlogd_log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("virtlogd.log")
    }

    /// QEMU capabilities as libvirt probed them, shared by the nodes and kept by `down`:
    /// probing takes seconds per node, and libvirt checks a cached copy itself (QEMU and
    /// libvirt binaries, kernel) before it trusts it.
    pub fn qemu_capabilities_cache(&self) -> PathBuf {
        self.root.join("cache").join("qemu-capabilities")
    }

    /// The cluster CA as keeld writes it on a node.
    pub fn node_ca(&self, node: &str) -> PathBuf {
        self.node_state(node).join("tls").join("ca.pem")
    }

    /// The cluster CA copied for clients.
    pub fn ca(&self) -> PathBuf {
        self.root.join("ca.pem")
    }

    /// The forwarder's log.
    pub fn forward_log(&self) -> PathBuf {
        self.root.join("forward.log")
    }
}

/// Why `dev.json` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DevStateError {
    /// Reading or writing failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a `dev.json` this build understands.
    #[error("{path} is not a dev cluster record of version {DEV_STATE_VERSION}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// Reads `dev.json`; `None` when there is none.
pub fn load(paths: &DevPaths) -> Result<Option<DevState>, DevStateError> {
    let path = paths.dev_json();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DevStateError::Io {
                action: "reading",
                path,
                source,
            })
        }
    };
    let state: DevState = serde_json::from_str(&text).map_err(|source| DevStateError::Parse {
        path: path.clone(),
        source,
    })?;
    if state.version != DEV_STATE_VERSION {
        return Err(DevStateError::Parse {
            path,
            source: serde::de::Error::custom(format!("unknown version {}", state.version)),
        });
    }
    Ok(Some(state))
}

/// Writes `dev.json` atomically (mode 0600: it holds the admin password).
pub fn save(paths: &DevPaths, state: &DevState) -> Result<(), DevStateError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let path = paths.dev_json();
    let tmp = path.with_extension("json.tmp");
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| DevStateError::Io {
            action,
            path,
            source,
        }
    };
    let body = serde_json::to_vec_pretty(state).map_err(|e| DevStateError::Io {
        action: "encoding",
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("writing", &tmp))?;
    f.write_all(&body).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("writing", &path))?;
    Ok(())
}

/// Removes `dev.json` (the cluster is gone).
pub fn remove(paths: &DevPaths) -> Result<(), DevStateError> {
    match std::fs::remove_file(paths.dev_json()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DevStateError::Io {
            action: "removing",
            path: paths.dev_json(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DevState {
        DevState {
            version: DEV_STATE_VERSION,
            id: "ab12".into(),
            subnet: "10.77.0.0/24".parse().unwrap(),
            expected_nodes: 3,
            join_secret: "0123456789abcdef0123456789abcdef".into(),
            admin_password: "pw".into(),
            keeld: "/usr/bin/keeld".into(),
            ns_dir_mounted: true,
            bridge: Some("kbr-ab12".into()),
            forwarder: Some(Forwarder {
                listen: "127.0.0.1:8443".parse().unwrap(),
                pid: 42,
            }),
            nodes: vec![
                DevNode {
                    name: "node1".into(),
                    index: 1,
                    address: "10.77.0.11".parse().unwrap(),
                    netns: Some("keel-ab12-node1".into()),
                    veth: Some("kvab12n1".into()),
                    mount_ns: Some("/s/ns/node1.mnt".into()),
                    join_secret: None,
                    libvirt: true,
                },
                DevNode {
                    name: "intruder".into(),
                    index: 4,
                    address: "10.77.0.14".parse().unwrap(),
                    netns: None,
                    veth: None,
                    mount_ns: None,
                    join_secret: Some("wrong".into()),
                    libvirt: false,
                },
            ],
        }
    }

    #[test]
    fn round_trips_and_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let paths = DevPaths::new(dir.path());
        assert!(load(&paths).unwrap().is_none());
        save(&paths, &sample()).unwrap();
        assert_eq!(load(&paths).unwrap(), Some(sample()));
        let mode = std::fs::metadata(paths.dev_json())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        remove(&paths).unwrap();
        remove(&paths).unwrap();
        assert!(load(&paths).unwrap().is_none());
    }

    #[test]
    fn records_from_before_libvirt_load_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let paths = DevPaths::new(dir.path());
        let mut v = serde_json::to_value(sample()).unwrap();
        for n in v["nodes"].as_array_mut().unwrap() {
            n.as_object_mut().unwrap().remove("libvirt");
        }
        std::fs::write(paths.dev_json(), v.to_string()).unwrap();
        let loaded = load(&paths).unwrap().unwrap();
        assert!(loaded.nodes.iter().all(|n| !n.libvirt));
    }

    #[test]
    fn unknown_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = DevPaths::new(dir.path());
        let mut s = sample();
        s.version = 2;
        std::fs::write(paths.dev_json(), serde_json::to_string(&s).unwrap()).unwrap();
        assert!(matches!(load(&paths), Err(DevStateError::Parse { .. })));
    }

    #[test]
    fn lookups_and_paths() {
        let s = sample();
        assert_eq!(s.next_index(), 5);
        assert_eq!(s.node("node1").unwrap().api(), "https://10.77.0.11:8443");
        assert!(s.node("node9").is_none());
        let p = DevPaths::new("/s");
        assert_eq!(p.mount_ns("node1"), PathBuf::from("/s/ns/node1.mnt"));
        assert_eq!(
            p.node_ca("node2"),
            PathBuf::from("/s/node2/state/tls/ca.pem")
        );
        assert_eq!(p.answer("node2"), PathBuf::from("/s/node2/answer.toml"));
        assert_eq!(p.log("node2"), PathBuf::from("/s/node2/keeld.log"));
        assert_eq!(p.libvirt_dir("node2"), PathBuf::from("/s/node2/libvirt"));
        assert_eq!(
            p.libvirtd_log("node2"),
            PathBuf::from("/s/node2/libvirtd.log")
        );
        assert!(!format!("{s:?}").contains("0123456789abcdef"));
    }
}
