//! [`CpuMode`]: which CPU the guest sees.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ValidationError;

/// The guest CPU. A named model is the same on every host that can run it, so the guest can
/// live-migrate between different CPUs; host-passthrough is fastest but ties migration to
/// identical hosts and needs KVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CpuMode {
    /// The host CPU as it is (libvirt `host-passthrough`); KVM only.
    HostPassthrough,
    /// A named, migration-safe model from QEMU's list (libvirt `custom` mode, exact match,
    /// no fallback), such as `qemu64` or `Nehalem`.
    Model {
        /// The model name.
        name: CpuModel,
    },
}

/// A QEMU CPU model name such as `qemu64`, `Nehalem` or `Skylake-Client-IBRS` (QEMU 7.2 in Debian 12 has no `x86-64-v2` yet): 1 to 64 of
/// `a-z A-Z 0-9 - _ .`. Whether the host supports it is libvirt's call, reported when the
/// domain is defined or started.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CpuModel(String);

impl CpuModel {
    /// Checks `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, ValidationError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(Self(name))
        } else {
            Err(ValidationError::Malformed {
                field: "cpu.name".into(),
                value: name,
                expected: "a CPU model name: 1 to 64 of a-z A-Z 0-9 - _ .",
            })
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CpuModel {
    type Error = ValidationError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<CpuModel> for String {
    fn from(value: CpuModel) -> Self {
        value.0
    }
}

impl fmt::Display for CpuModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
