//! [`DomainName`]: the libvirt domain name Keel gives a VM.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ValidationError;

/// A libvirt domain name Keel is willing to create: 1 to 63 ASCII letters, digits, `-`, `_` or
/// `.`, starting with a letter or digit. That is a subset of what libvirt accepts, so it is safe
/// in file names (libvirt names the domain's log, socket and config files after it) and in
/// XML, and it holds any DNS-safe Keel VM name.
///
/// Domains Keel did not create may have other names; [`DomainInfo`](crate::DomainInfo) reports
/// them as plain strings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

impl DomainName {
    /// Longest name accepted.
    pub const MAX_LEN: usize = 63;

    /// Checks `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, ValidationError> {
        let name = name.into();
        let ok_len = !name.is_empty() && name.len() <= Self::MAX_LEN;
        let ok_first = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let ok_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok_len && ok_first && ok_chars {
            Ok(Self(name))
        } else {
            Err(ValidationError::Malformed {
                field: "name".into(),
                value: name,
                expected: "1 to 63 of a-z A-Z 0-9 - _ . starting with a letter or digit",
            })
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DomainName {
    type Error = ValidationError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<DomainName> for String {
    fn from(value: DomainName) -> Self {
        value.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DomainName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_safe_and_libvirt_style_names() {
        for ok in ["a", "vm-1", "web.prod_2", &"x".repeat(63)] {
            assert!(DomainName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_empty_long_and_unsafe_names() {
        for bad in ["", "-vm", ".hidden", "a/b", "vm 1", "vé", &"x".repeat(64)] {
            assert!(DomainName::new(bad).is_err(), "{bad}");
        }
    }
}
