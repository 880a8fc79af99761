//! The answer file: the TOML that a factory install, the appliance's first boot and
//! `keel dev up` hand to a node so it can find its cluster without a person.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{Cidr, Name, ValidationError};

/// The answer-file format this build writes and reads. Older versions are migrated on read.
pub const ANSWER_FILE_VERSION: u32 = 1;

/// The whole answer file. Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerFile {
    /// Format version; defaults to the current one.
    #[serde(default = "current_version")]
    pub version: u32,
    /// The cluster to found or join.
    pub cluster: ClusterSection,
    /// The first administrator.
    pub admin: AdminSection,
    /// This node.
    pub node: NodeSection,
    /// Host networking.
    pub network: NetworkSection,
}

fn current_version() -> u32 {
    ANSWER_FILE_VERSION
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Cluster name (a DNS label).
    pub name: Name,
    /// How many nodes form the cluster at first; the lowest-named node founds it once it
    /// sees them all.
    pub expected_nodes: u32,
    /// Shared secret that a node must prove to join (at least 16 characters).
    pub join_secret: String,
}

/// `[admin]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Password of the `admin` user (at least 8 characters).
    pub password: String,
}

impl std::fmt::Debug for AdminSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSection")
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's name (a DNS label), unique in the cluster.
    pub name: Name,
}

/// `[network]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// `[network.management]`: the network the nodes talk on.
    pub management: ManagementNetwork,
}

/// `[network.management]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagementNetwork {
    /// Interface name (give this or `mac`).
    #[serde(default)]
    pub interface: Option<String>,
    /// MAC address of the interface (give this or `interface`).
    #[serde(default)]
    pub mac: Option<String>,
    /// This node's address with prefix, e.g. `10.0.0.11/24`.
    pub address: Cidr,
    /// Default gateway.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// DNS servers.
    #[serde(default)]
    pub dns: Vec<IpAddr>,
}

/// Why an answer file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AnswerFileError {
    /// Not TOML, an unknown key, or a value of the wrong shape.
    #[error("answer file: {0}")]
    Parse(#[from] toml::de::Error),
    /// Well-formed, but a value breaks a rule.
    #[error("answer file: {0}")]
    Invalid(#[from] ValidationError),
}

impl AnswerFile {
    /// Parses and validates an answer file.
    pub fn from_toml(text: &str) -> Result<Self, AnswerFileError> {
        let file: AnswerFile = toml::from_str(text)?;
        file.validate()?;
        Ok(file)
    }

    /// Renders the answer file as TOML.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Cross-field checks; the error names the key.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.version == 0 || self.version > ANSWER_FILE_VERSION {
            return Err(ValidationError::new(
                "version",
                format!(
                    "answer file version {} is not known to this build; it reads versions 1 to {ANSWER_FILE_VERSION}",
                    self.version
                ),
            ));
        }
        let n = self.cluster.expected_nodes;
        if !(1..=64).contains(&n) {
            return Err(ValidationError::new(
                "cluster.expected_nodes",
                format!("{n} nodes is out of range; use 1 to 64 (3 for a standard box)"),
            ));
        }
        if self.cluster.join_secret.chars().count() < 16 {
            return Err(ValidationError::new(
                "cluster.join_secret",
                "the join secret is shorter than 16 characters; use a long random string",
            ));
        }
        if self.admin.password.chars().count() < 8 {
            return Err(ValidationError::new(
                "admin.password",
                "the admin password is shorter than 8 characters",
            ));
        }
        let mgmt = &self.network.management;
        match (&mgmt.interface, &mgmt.mac) {
            (None, None) => {
                return Err(ValidationError::new(
                    "network.management.interface",
                    "name the management interface (interface = \"eth0\") or its MAC (mac = \"52:54:00:..\")",
                ))
            }
            (Some(i), _) if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) => {
                return Err(ValidationError::new(
                    "network.management.interface",
                    format!("{i:?} is not an interface name (1-15 characters, no '/' or space)"),
                ))
            }
            (_, Some(mac)) if !is_mac(mac) => {
                return Err(ValidationError::new(
                    "network.management.mac",
                    format!("{mac:?} is not a MAC address; write it like 52:54:00:12:34:56"),
                ))
            }
            _ => {}
        }
        if let Some(gw) = mgmt.gateway {
            if gw.is_ipv4() != mgmt.address.addr().is_ipv4() {
                return Err(ValidationError::new(
                    "network.management.gateway",
                    "the gateway and the address are of different IP families",
                ));
            }
        }
        Ok(())
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[cluster]
name = "lab"
expected_nodes = 3
join_secret = "0123456789abcdef0123"

[admin]
password = "correct horse"

[node]
name = "node1"

[network.management]
interface = "eth0"
address = "10.77.0.11/24"
gateway = "10.77.0.1"
dns = ["10.77.0.1"]
"#;

    #[test]
    fn parses_a_good_file_and_round_trips() {
        let a = AnswerFile::from_toml(GOOD).unwrap();
        assert_eq!(a.node.name.as_str(), "node1");
        assert_eq!(a.version, ANSWER_FILE_VERSION);
        let again = AnswerFile::from_toml(&a.to_toml().unwrap()).unwrap();
        assert_eq!(a, again);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GOOD.replace("[admin]", "[admin]\nlogin = \"x\"");
        let err = AnswerFile::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("login"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (
                "expected_nodes = 3",
                "expected_nodes = 0",
                "cluster.expected_nodes",
            ),
            (
                "join_secret = \"0123456789abcdef0123\"",
                "join_secret = \"short\"",
                "cluster.join_secret",
            ),
            (
                "password = \"correct horse\"",
                "password = \"x\"",
                "admin.password",
            ),
            (
                "interface = \"eth0\"",
                "mac = \"zz\"",
                "network.management.mac",
            ),
            ("interface = \"eth0\"", "", "network.management.interface"),
        ];
        for (from, to, key) in cases {
            let err = AnswerFile::from_toml(&GOOD.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{to}: {err}");
        }
        for (from, to, word) in [
            ("name = \"node1\"", "name = \"Node_1\"", "name"),
            (
                "address = \"10.77.0.11/24\"",
                "address = \"10.77.0.11\"",
                "address",
            ),
            (
                "expected_nodes = 3",
                "expected_nodes = \"three\"",
                "expected_nodes",
            ),
        ] {
            let err = AnswerFile::from_toml(&GOOD.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(err.contains(word), "{to}: {err}");
        }
    }
}
