//! The pure part of the dev cluster: names of host objects, subnet arithmetic, secrets and
//! answer files. Nothing here touches the host, so all of it is unit-tested.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use keel_model::{
    AdminSection, AnswerFile, Cidr, ClusterSection, ManagementNetwork, Name, NetworkSection,
    NodeSection, ANSWER_FILE_VERSION,
};
use rand::distributions::{Alphanumeric, DistString};
use rand::RngCore;

/// The cluster name every dev cluster uses.
pub const CLUSTER_NAME: &str = "dev";

/// The node-side interface name.
pub const NODE_INTERFACE: &str = "eth0";

/// Host addresses below this are left to the host (.1) and future use; nodeN gets .(10+N).
pub const NODE_HOST_OFFSET: u32 = 10;

/// The API port of every node.
pub const API_PORT: u16 = 8443;

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// The subnet is not IPv4.
    #[error("the dev subnet {0} is not IPv4; use something like 10.77.0.0/24")]
    NotIpv4(Cidr),
    /// The subnet is too small for the nodes.
    #[error(
        "the dev subnet {subnet} has no host address .{host} for node {index}; use a larger subnet"
    )]
    TooSmall {
        /// Subnet.
        subnet: String,
        /// The host number asked for.
        host: u32,
        /// The node index.
        index: u32,
    },
    /// The answer file would be invalid.
    #[error("the generated answer file for {node} is invalid")]
    Answer {
        /// Node.
        node: String,
        /// Why.
        #[source]
        source: keel_model::ValidationError,
    },
}

/// A short id of a state directory (4 hex characters of a 32-bit FNV-1a hash of its path),
/// so two dev clusters with different state directories get different host object names.
pub fn dev_id(state_dir: &Path) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in state_dir.as_os_str().as_encoded_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:04x}", (h >> 16) ^ (h & 0xffff))
}

/// The host bridge: `kbr-<id>`.
pub fn bridge_name(id: &str) -> String {
    format!("kbr-{id}")
}

/// A node's network namespace: `keel-<id>-<node>`.
pub fn netns_name(id: &str, node: &str) -> String {
    format!("keel-{id}-{node}")
}

/// The host side of a node's veth pair: `kv<id>n<index>`.
pub fn veth_name(id: &str, index: u32) -> String {
    format!("kv{id}n{index}")
}

/// The default node name for index `n`.
pub fn node_name(n: u32) -> String {
    format!("node{n}")
}

/// An IPv4 subnet, normalised to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// The subnet `cidr` lies in (host bits are cleared).
    pub fn from_cidr(cidr: &Cidr) -> Result<Self, PlanError> {
        let IpAddr::V4(addr) = cidr.addr() else {
            return Err(PlanError::NotIpv4(*cidr));
        };
        let prefix = cidr.prefix();
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The subnet as a CIDR.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }

    /// Host number `k` (1 = the first address after the network address), if it is inside
    /// the subnet and not its broadcast address.
    pub fn host(&self, k: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        if k == 0 || u64::from(k) + 1 >= size {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.network) + k))
    }

    /// The host's address on the bridge (.1), the nodes' gateway.
    pub fn gateway(&self) -> Result<Ipv4Addr, PlanError> {
        self.host(1).ok_or(PlanError::TooSmall {
            subnet: self.cidr(),
            host: 1,
            index: 0,
        })
    }

    /// Node `index`'s address (.10+index).
    pub fn node_address(&self, index: u32) -> Result<Ipv4Addr, PlanError> {
        let host = NODE_HOST_OFFSET + index;
        self.host(host).ok_or(PlanError::TooSmall {
            subnet: self.cidr(),
            host,
            index,
        })
    }

    /// True when `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    /// True when the two subnets share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let p = self.prefix.min(other.prefix);
        u32::from(self.network) & mask(p) == u32::from(other.network) & mask(p)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// A random join secret: 32 hex characters.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random admin password: 20 letters and digits.
pub fn random_password() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 20)
}

/// What one node's answer file says.
#[derive(Debug, Clone)]
pub struct NodeAnswer<'a> {
    /// Node name.
    pub name: &'a str,
    /// Node address.
    pub address: Ipv4Addr,
    /// Nodes the cluster forms with.
    pub expected_nodes: u32,
    /// Join secret.
    pub join_secret: &'a str,
    /// Admin password.
    pub admin_password: &'a str,
}

/// The answer file of a dev node, validated.
pub fn answer_file(subnet: &Subnet, a: &NodeAnswer<'_>) -> Result<AnswerFile, PlanError> {
    let invalid = |source| PlanError::Answer {
        node: a.name.to_string(),
        source,
    };
    let address: Cidr = format!("{}/{}", a.address, subnet.prefix())
        .parse()
        .map_err(invalid)?;
    let file = AnswerFile {
        version: ANSWER_FILE_VERSION,
        cluster: ClusterSection {
            name: Name::new(CLUSTER_NAME).map_err(invalid)?,
            expected_nodes: a.expected_nodes,
            join_secret: a.join_secret.to_string(),
        },
        admin: AdminSection {
            password: a.admin_password.to_string(),
        },
        node: NodeSection {
            name: Name::new(a.name).map_err(|e| invalid(e.within("node.name")))?,
        },
        network: NetworkSection {
            management: ManagementNetwork {
                interface: Some(NODE_INTERFACE.to_string()),
                mac: None,
                address,
                gateway: Some(IpAddr::V4(subnet.gateway()?)),
                dns: Vec::new(),
            },
        },
    };
    file.validate().map_err(invalid)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(s: &str) -> Subnet {
        Subnet::from_cidr(&s.parse().unwrap()).unwrap()
    }

    #[test]
    fn ids_are_short_stable_and_differ_per_directory() {
        let a = dev_id(Path::new("/var/lib/keel-dev"));
        assert_eq!(a.len(), 4);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, dev_id(Path::new("/var/lib/keel-dev")));
        let others: std::collections::BTreeSet<String> = (0..50)
            .map(|i| dev_id(Path::new(&format!("/tmp/keel-test-{i}"))))
            .collect();
        assert!(others.len() >= 49, "{others:?}");
        assert_ne!(a, dev_id(Path::new("/tmp/keel-test-formation")));
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        let id = dev_id(Path::new("/x"));
        for name in [bridge_name(&id), veth_name(&id, 1), veth_name(&id, 32)] {
            assert!(name.len() <= 15, "{name}");
        }
        assert_eq!(bridge_name("ab12"), "kbr-ab12");
        assert_eq!(veth_name("ab12", 3), "kvab12n3");
        assert_eq!(netns_name("ab12", "node3"), "keel-ab12-node3");
        assert_eq!(node_name(2), "node2");
    }

    #[test]
    fn subnet_arithmetic() {
        let s = subnet("10.77.0.0/24");
        assert_eq!(s.gateway().unwrap(), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(s.node_address(1).unwrap(), Ipv4Addr::new(10, 77, 0, 11));
        assert_eq!(s.node_address(3).unwrap(), Ipv4Addr::new(10, 77, 0, 13));
        assert_eq!(s.node_address(244).unwrap(), Ipv4Addr::new(10, 77, 0, 254));
        assert!(matches!(
            s.node_address(245),
            Err(PlanError::TooSmall { host: 255, .. })
        ));
        assert_eq!(s.cidr(), "10.77.0.0/24");

        // Host bits are cleared.
        let s = subnet("10.77.1.99/24");
        assert_eq!(s.cidr(), "10.77.1.0/24");
        assert_eq!(s.node_address(2).unwrap(), Ipv4Addr::new(10, 77, 1, 12));

        // A /28 holds .1 to .14: nodes 1 to 4.
        let s = subnet("192.168.5.16/28");
        assert_eq!(s.node_address(4).unwrap(), Ipv4Addr::new(192, 168, 5, 30));
        let err = s.node_address(5).unwrap_err().to_string();
        assert!(err.contains("no host address .15 for node 5"), "{err}");

        assert!(matches!(
            Subnet::from_cidr(&"fd00::/64".parse().unwrap()),
            Err(PlanError::NotIpv4(_))
        ));
    }

    #[test]
    fn containment_and_overlap() {
        let s = subnet("10.77.0.0/24");
        assert!(s.contains(Ipv4Addr::new(10, 77, 0, 200)));
        assert!(!s.contains(Ipv4Addr::new(10, 77, 1, 1)));
        assert!(s.overlaps(&subnet("10.77.0.0/16")));
        assert!(s.overlaps(&subnet("10.77.0.128/25")));
        assert!(!s.overlaps(&subnet("10.77.1.0/24")));
        assert!(subnet("0.0.0.0/0").overlaps(&s));
    }

    #[test]
    fn secrets() {
        let s = random_secret();
        assert_eq!(s.len(), 32);
        assert!(s.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(s, random_secret());
        let p = random_password();
        assert_eq!(p.len(), 20);
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn answer_files_parse_back_with_the_model() {
        let s = subnet("10.77.0.0/24");
        let secret = random_secret();
        let file = answer_file(
            &s,
            &NodeAnswer {
                name: "node2",
                address: s.node_address(2).unwrap(),
                expected_nodes: 3,
                join_secret: &secret,
                admin_password: "a-good-password",
            },
        )
        .unwrap();
        let text = file.to_toml().unwrap();
        let back = AnswerFile::from_toml(&text).unwrap();
        assert_eq!(back, file);
        assert_eq!(back.cluster.name.as_str(), "dev");
        assert_eq!(back.cluster.expected_nodes, 3);
        assert_eq!(back.cluster.join_secret, secret);
        assert_eq!(back.node.name.as_str(), "node2");
        let m = &back.network.management;
        assert_eq!(m.interface.as_deref(), Some("eth0"));
        assert_eq!(m.address.to_string(), "10.77.0.12/24");
        assert_eq!(m.gateway, Some("10.77.0.1".parse().unwrap()));
        assert!(text.contains("[network.management]"), "{text}");
    }

    #[test]
    fn bad_answers_name_the_field() {
        let s = subnet("10.77.0.0/24");
        let base = NodeAnswer {
            name: "node1",
            address: Ipv4Addr::new(10, 77, 0, 11),
            expected_nodes: 3,
            join_secret: "short",
            admin_password: "a-good-password",
        };
        let err = answer_file(&s, &base).unwrap_err();
        let PlanError::Answer { source, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(source.field, "cluster.join_secret");
        let err = answer_file(
            &s,
            &NodeAnswer {
                name: "Bad_Name",
                join_secret: "0123456789abcdef0",
                ..base
            },
        )
        .unwrap_err();
        let PlanError::Answer { source, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(source.field, "node.name");
    }
}
