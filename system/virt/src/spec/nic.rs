//! [`Nic`]: a virtio NIC on an Open vSwitch bridge.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{MacAddr, ValidationError};

/// A virtio NIC plugged into an OVS bridge (libvirt `<interface type='bridge'>` with an
/// `openvswitch` virtualport). libvirt creates the tap device, adds it to the bridge as an OVS
/// port, and removes both when the domain stops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// The OVS bridge.
    pub bridge: BridgeName,
    /// The guest's Ethernet address.
    pub mac: MacAddr,
    /// The OVS port's `external_ids:iface-id`, which OVN binds logical ports by; libvirt makes
    /// one up when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_id: Option<Uuid>,
}

/// A Linux network interface name: 1 to 15 of `a-z A-Z 0-9 - _ .`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BridgeName(String);

impl BridgeName {
    /// Longest name the kernel accepts (`IFNAMSIZ` less the terminating NUL).
    pub const MAX_LEN: usize = 15;

    /// Checks `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, ValidationError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(Self(name))
        } else {
            Err(ValidationError::Malformed {
                field: "bridge".into(),
                value: name,
                expected: "an interface name: 1 to 15 of a-z A-Z 0-9 - _ .",
            })
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BridgeName {
    type Error = ValidationError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<BridgeName> for String {
    fn from(value: BridgeName) -> Self {
        value.0
    }
}

impl fmt::Display for BridgeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
